"""Database operations of the service: events, the review queue, feedback, enrolments, the webhook outbox.

Every function takes a :class:`~sqlalchemy.orm.Session` and leaves committing to the
caller, so one HTTP request is one transaction: an answered resolution, its outbox
messages and nothing else are committed together.
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from skuscale.monitor.accuracy import Outcome
from skuscale.serve.db import ENROL_LOCK, Enrolment, Event, Feedback, OutboxMessage, StoredImage, Webhook, utcnow

REVIEW_BANDS = ("verify", "unknown")
FINALIZED = "event.finalized"


class NotFoundError(LookupError):
    pass


class ConflictError(RuntimeError):
    pass


def new_id() -> str:
    return uuid.uuid4().hex


def event_dict(ev: Event) -> dict[str, Any]:
    return {
        "event_id": ev.id,
        "status": ev.status,
        "band": ev.band,
        "sku": ev.sku,
        "confidence": ev.confidence,
        "ood_score": ev.ood_score,
        "candidates": ev.candidates,
        "category": ev.category,
        "category_confidence": ev.category_confidence,
        "created_at": ev.created_at.isoformat() + "Z",
        "final_sku": ev.final_sku,
        "resolution": ev.resolution,
        "proposed_sku": ev.proposed_sku,
        "resolved_at": None if ev.resolved_at is None else ev.resolved_at.isoformat() + "Z",
        "has_image": ev.image_sha256 is not None,
    }


# ------------------------------------------------------------------------- images
def ensure_image(session: Session, sha256: str, path: str, size: int) -> None:
    """Insert the image reference unless it is there already (concurrent inserts are fine)."""
    stmt_cls = _dialect_insert(session)
    stmt = stmt_cls(StoredImage).values(sha256=sha256, path=path, size=size, created_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))


def ensure_images(session: Session, images) -> None:
    """:func:`ensure_image` for each ``(sha256, path, size)``, once each, in digest order.

    One order for every transaction: two requests holding the same new images (a batch
    and an enrolment, say) never lock their rows in opposite orders, which on PostgreSQL
    is a deadlock.
    """
    for sha256, path, size in sorted(set(images)):
        ensure_image(session, sha256, path, size)


def _dialect_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


# ------------------------------------------------------------------------- events
def add_event(session: Session, rec, image_sha256: str | None) -> Event:
    """Store one recognition; ``accept`` is final at once, anything else is pending review."""
    final = rec.band == "accept"
    now = utcnow()
    ev = Event(
        id=new_id(),
        created_at=now,
        band=rec.band,
        sku=rec.sku,
        confidence=rec.confidence,
        ood_score=rec.ood_score,
        category=rec.category,
        category_confidence=rec.category_confidence,
        candidates=rec.candidates,
        image_sha256=image_sha256,
        status="final" if final else "pending",
        final_sku=rec.sku if final else None,
        resolution="accepted" if final else None,
        resolved_at=now if final else None,
    )
    session.add(ev)
    if final:
        session.flush()
        enqueue_finalized(session, ev)
    return ev


def get_event(session: Session, event_id: str) -> Event:
    ev = session.get(Event, event_id)
    if ev is None:
        raise NotFoundError(f"no event {event_id!r}")
    return ev


def list_review(
    session: Session,
    *,
    band: str | None = None,
    sku: str | None = None,
    category: str | None = None,
    status: str = "pending",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Event], int]:
    """Review items (verify/unknown events), oldest first, with the total matching count."""
    conds = [Event.band.in_(REVIEW_BANDS)]
    if band:
        conds.append(Event.band == band)
    if sku:
        conds.append(Event.sku == sku)
    if category:
        conds.append(Event.category == category)
    if status != "all":
        conds.append(Event.status == status)
    where = and_(*conds)
    total = session.execute(select(func.count()).select_from(Event).where(where)).scalar_one()
    rows = session.execute(
        select(Event).where(where).order_by(Event.created_at, Event.id).limit(limit).offset(offset)
    ).scalars()
    return list(rows), int(total)


def queue_depth(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Event.band, func.count()).where(Event.status == "pending").group_by(Event.band)
    ).all()
    return {band: int(n) for band, n in rows}


def resolve(
    session: Session,
    event_id: str,
    *,
    resolution: str,
    final_sku: str | None,
    proposed_sku: str | None,
    by: str,
) -> Event:
    """Finalise a pending review item. Exactly one of several concurrent callers wins.

    The conditional ``UPDATE ... WHERE status = 'pending'`` is the arbiter: the database
    serialises the writers and every loser sees zero rows changed.

    Raises
    ------
    NotFoundError
        No such event.
    ConflictError
        The event is final already (accepted, or resolved by someone else).
    """
    now = utcnow()
    result = session.execute(
        update(Event)
        .where(Event.id == event_id, Event.status == "pending")
        .values(
            status="final",
            final_sku=final_sku,
            resolution=resolution,
            proposed_sku=proposed_sku,
            resolved_at=now,
            resolved_by=by,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        ev = session.get(Event, event_id)
        if ev is None:
            raise NotFoundError(f"no event {event_id!r}")
        raise ConflictError(f"event {event_id} is final already ({ev.resolution})")
    ev = session.execute(
        select(Event).where(Event.id == event_id).execution_options(populate_existing=True)
    ).scalar_one()
    enqueue_finalized(session, ev)
    return ev


def add_feedback(
    session: Session, ev: Event, *, truth_sku: str | None, not_a_product: bool, source: str | None
) -> tuple[Feedback, bool]:
    """Record downstream ground truth for ``ev``; returns the row and whether the prediction was right."""
    correct = (not not_a_product) and truth_sku == ev.sku
    fb = Feedback(
        event_id=ev.id,
        truth_sku=truth_sku,
        not_a_product=not_a_product,
        outcome="correct" if correct else "incorrect",
        source=source,
        created_at=utcnow(),
    )
    session.add(fb)
    return fb, correct


#: How long after its timestamp a labelled row may become visible (its transaction commits)
#: and still be read by :class:`LabelFeed`: far longer than a request's transaction lives.
LABEL_LATENESS = _dt.timedelta(minutes=2)


@dataclass
class _Cursor:
    """Where a :class:`LabelFeed` stands in one table: its newest timestamp read, and the ids
    read at or after ``newest - lateness`` (the rows the next query will see again)."""

    newest: _dt.datetime | None = None
    recent: dict[Any, _dt.datetime] = field(default_factory=dict)

    def narrow(self, query, stamp, *, limit: int, lateness: _dt.timedelta):
        """``query`` restricted to what this cursor may not have read: the newest ``limit``
        rows by ``stamp`` on the first read, else the rows from ``lateness`` before the newest."""
        if self.newest is None:
            return query.order_by(stamp.desc()).limit(limit)
        return query.where(stamp >= self.newest - lateness)

    def take(self, rows: list, lateness: _dt.timedelta) -> list:
        """The rows (id, timestamp, ...) not read before; moves the cursor past them."""
        fresh = [r for r in rows if r[0] not in self.recent]
        for r in fresh:
            self.recent[r[0]] = r[1]
            if self.newest is None or r[1] > self.newest:
                self.newest = r[1]
        if self.newest is not None:
            horizon = self.newest - lateness
            self.recent = {k: t for k, t in self.recent.items() if t >= horizon}
        return fresh


class LabelFeed:
    """Outcomes (predicted SKU, correct, event id, label time) of resolutions and feedback
    that this reader has not returned yet.

    An event can have several labels (a resolution and feedback, several feedback calls):
    each is returned, with its event id, and :class:`~skuscale.monitor.accuracy.RollingAccuracy`
    keeps the latest of them.

    The first :meth:`read` returns the newest ``limit`` resolutions and the newest ``limit``
    feedback rows; each later one only the rows committed since, so a process can follow
    the labels that other processes write at the cost of the new rows alone. Rows are
    found by their indexed timestamps (``Event.resolved_at``, ``Feedback.created_at``)
    from ``lateness`` before the newest one read, and rows read before are skipped by
    id. A transaction that commits after a later one is therefore still read once, as
    long as it commits within ``lateness`` of its timestamp.

    Parameters
    ----------
    limit : int
        Rows of each kind on the first read.
    lateness : datetime.timedelta
    """

    def __init__(self, *, limit: int = 100_000, lateness: _dt.timedelta = LABEL_LATENESS):
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = int(limit)
        self.lateness = lateness
        self._resolutions = _Cursor()
        self._feedback = _Cursor()

    def read(self, session: Session) -> list[Outcome]:
        """The labels not returned before, oldest first."""
        resolved_q = select(Event.id, Event.resolved_at, Event.sku, Event.final_sku, Event.resolution).where(
            Event.resolution.in_(("sku", "new_product", "not_a_product"))
        )
        feedback_q = select(
            Feedback.id, Feedback.created_at, Event.sku, Feedback.outcome, Feedback.event_id
        ).join(Event, Event.id == Feedback.event_id)
        resolved_q = self._resolutions.narrow(resolved_q, Event.resolved_at, limit=self.limit, lateness=self.lateness)
        feedback_q = self._feedback.narrow(feedback_q, Feedback.created_at, limit=self.limit, lateness=self.lateness)
        resolved_rows, feedback_rows = session.execute(resolved_q).all(), session.execute(feedback_q).all()
        # Only once both queries have answered: a failed read must leave both cursors where they were.
        resolved = self._resolutions.take(resolved_rows, self.lateness)
        feedback = self._feedback.take(feedback_rows, self.lateness)
        rows = [Outcome(sku, res == "sku" and final == sku, eid, t) for eid, t, sku, final, res in resolved]
        rows += [Outcome(sku, outcome == "correct", eid, t) for _, t, sku, outcome, eid in feedback]
        rows.sort(key=lambda r: r.at)
        return rows


# ------------------------------------------------------------------------- enrolments
def lock_enrolments(session: Session) -> None:
    """Take the enrolment lock until the session's transaction ends (PostgreSQL; a no-op on SQLite).

    Enrolment ids must become visible in id order, or a worker that has applied every
    enrolment up to id n (:func:`enrolments_after`) would skip an id below n committed
    later. A sequence hands ids out at insert, not at commit, so on PostgreSQL enrolling
    transactions are serialised by a transaction-level advisory lock: the next one gets
    its id only after this one has committed. (SQLite has one writer at a time anyway:
    its write lock is held until commit.) Taking it again in the same transaction is fine.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({ENROL_LOCK})"))


def add_enrolment(
    session: Session, sku: str, category: str | None, X: np.ndarray, image_sha256s: list[str]
) -> Enrolment:
    """Insert an enrolment under :func:`lock_enrolments`: the caller must commit (or roll back) soon."""
    lock_enrolments(session)
    X = np.ascontiguousarray(X, dtype="<f4")
    row = Enrolment(
        sku=sku,
        category=category,
        dim=int(X.shape[1]),
        n_images=int(X.shape[0]),
        embeddings=X.tobytes(),
        image_sha256s=list(image_sha256s),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def enrolments_after(session: Session, after_id: int) -> list[tuple[int, str, str | None, np.ndarray]]:
    rows = session.execute(select(Enrolment).where(Enrolment.id > after_id).order_by(Enrolment.id)).scalars()
    return [
        (r.id, r.sku, r.category, np.frombuffer(r.embeddings, dtype="<f4").reshape(r.n_images, r.dim).copy())
        for r in rows
    ]


def latest_enrolment_id(session: Session) -> int:
    return int(session.execute(select(func.coalesce(func.max(Enrolment.id), 0))).scalar_one())


def enrolment_image(session: Session, sku: str) -> str | None:
    row = session.execute(
        select(Enrolment.image_sha256s).where(Enrolment.sku == sku).order_by(Enrolment.id).limit(1)
    ).scalar_one_or_none()
    return row[0] if row else None


# ------------------------------------------------------------------------- webhooks
def add_webhook(session: Session, url: str, secret: str | None) -> Webhook:
    hook = Webhook(id=new_id(), url=url, secret=secret or secrets.token_hex(32), active=True, created_at=utcnow())
    session.add(hook)
    return hook


def enqueue_finalized(session: Session, ev: Event) -> int:
    """One outbox message per active webhook for a finalised event (same transaction as the change)."""
    hooks = session.execute(select(Webhook.id).where(Webhook.active.is_(True))).scalars().all()
    if not hooks:
        return 0
    key = f"{ev.id}.finalized"
    body = json.dumps(
        {
            "type": FINALIZED,
            "idempotency_key": key,
            "event_id": ev.id,
            "status": "final",
            "sku": ev.final_sku,
            "resolution": ev.resolution,
            "proposed_sku": ev.proposed_sku,
            "band": ev.band,
            "predicted_sku": ev.sku,
            "finalized_at": (ev.resolved_at or utcnow()).isoformat() + "Z",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    now = utcnow()
    session.execute(
        insert(OutboxMessage),
        [
            {
                "webhook_id": hook,
                "event_id": ev.id,
                "kind": FINALIZED,
                "idempotency_key": f"{hook}:{key}",
                "body": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook in hooks
        ],
    )
    return len(hooks)


@dataclass
class Delivery:
    id: int
    url: str
    secret: str
    body: str
    idempotency_key: str
    attempts: int


def claim_deliveries(session: Session, *, lease_s: float, limit: int = 20) -> list[Delivery]:
    """Claim due outbox messages for ``lease_s`` seconds (safe with several worker processes)."""
    now = utcnow()
    due = session.execute(
        select(OutboxMessage.id)
        .join(Webhook, Webhook.id == OutboxMessage.webhook_id)
        .where(
            Webhook.active.is_(True),
            OutboxMessage.status == "pending",
            OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now),
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
    ).scalars().all()
    claimed = []
    until = now + _dt.timedelta(seconds=lease_s)
    for mid in due:
        res = session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.id == mid,
                OutboxMessage.status == "pending",
                or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now),
            )
            .values(locked_until=until)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:
            claimed.append(mid)
    session.commit()
    if not claimed:
        return []
    rows = session.execute(
        select(OutboxMessage, Webhook).join(Webhook, Webhook.id == OutboxMessage.webhook_id)
        .where(OutboxMessage.id.in_(claimed))
    ).all()
    return [
        Delivery(m.id, h.url, h.secret, m.body, m.idempotency_key.split(":", 1)[1], m.attempts) for m, h in rows
    ]


def cancel_deliveries(session: Session, webhook_id: str) -> int:
    """Cancel the undelivered messages of a (deleted) webhook; returns how many."""
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.webhook_id == webhook_id, OutboxMessage.status == "pending")
        .values(status="cancelled", locked_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def finish_delivery(
    session: Session, message_id: int, *, ok: bool, error: str | None, backoff_s: float, backoff_max_s: float,
    max_attempts: int,
) -> str:
    """Mark a claimed message delivered, or schedule its retry with exponential back-off."""
    msg = session.get(OutboxMessage, message_id)
    if msg is None:
        return "missing"
    now = utcnow()
    msg.attempts += 1
    msg.locked_until = None
    if ok:
        msg.status, msg.delivered_at, msg.last_error = "delivered", now, None
    else:
        msg.last_error = (error or "")[:2000]
        if msg.status == "cancelled":
            pass  # its webhook was deleted while this attempt was in flight: no retry
        elif msg.attempts >= max_attempts:
            msg.status = "failed"
        else:
            delay = min(backoff_s * 2 ** (msg.attempts - 1), backoff_max_s)
            msg.next_attempt_at = now + _dt.timedelta(seconds=delay)
    session.commit()
    return msg.status
