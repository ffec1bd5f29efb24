"""Database schema (SQLAlchemy 2 ORM), engine set-up and Alembic migration on start-up.

SQLite runs in WAL mode (readers never block the single writer; a committed
transaction survives a killed process). PostgreSQL is selected by URL; an optional
schema isolates one deployment (or one test run) from another.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
SKU_LENGTH = 128
WEBHOOK_URL_LENGTH = 2000
#: ``pg_advisory_xact_lock`` keys: migrating the schema; inserting an enrolment.
MIGRATE_LOCK = 5170001
ENROL_LOCK = 5170002


def utcnow() -> _dt.datetime:
    """Naive UTC now: stored the same way by SQLite and PostgreSQL."""
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StoredImage(Base):
    """An image file in the content-addressed store."""

    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)


class Event(Base):
    """One recognised image. ``status`` is ``final`` (accepted or resolved) or ``pending``."""

    __tablename__ = "events"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    band: Mapped[str] = mapped_column(String(8), index=True)
    sku: Mapped[str] = mapped_column(String(SKU_LENGTH), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    ood_score: Mapped[float] = mapped_column(Float)
    category: Mapped[str | None] = mapped_column(String(SKU_LENGTH), nullable=True, index=True)
    category_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"), nullable=True)
    status: Mapped[str] = mapped_column(String(8), index=True)
    final_sku: Mapped[str | None] = mapped_column(String(SKU_LENGTH), nullable=True)
    resolution: Mapped[str | None] = mapped_column(String(16), nullable=True)
    proposed_sku: Mapped[str | None] = mapped_column(String(SKU_LENGTH), nullable=True)
    resolved_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    resolved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Feedback(Base):
    """Ground truth from downstream (e.g. a cashier's correction) for any event."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"), index=True)
    truth_sku: Mapped[str | None] = mapped_column(String(200), nullable=True)
    not_a_product: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Enrolment(Base):
    """Embeddings that enrolled a SKU; re-applied to the model on every start."""

    __tablename__ = "enrolments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(SKU_LENGTH), index=True)
    category: Mapped[str | None] = mapped_column(String(SKU_LENGTH), nullable=True)
    dim: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    embeddings: Mapped[bytes] = mapped_column(LargeBinary)
    image_sha256s: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)


class Webhook(Base):
    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(WEBHOOK_URL_LENGTH))
    secret: Mapped[str] = mapped_column(String(128))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)


class OutboxMessage(Base):
    """A webhook delivery, written in the same transaction as the change it reports."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    locked_until: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode loses nothing when the process dies; only an OS crash could.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine, *, schema: str | None = None) -> None:
    """Create the schema (PostgreSQL) and bring the database to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two workers starting together must not both create the schema or run the migration:
            # the lock comes first, in the same transaction (CREATE SCHEMA IF NOT EXISTS is not
            # safe against a concurrent one).
            conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})"))
            if schema:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
