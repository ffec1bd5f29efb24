"""Service configuration, read from ``SKUSCALE_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skuscale.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

Role = Literal["device", "reviewer"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    """sha256 hex digest of a bearer token: the form tokens take in configuration."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ServeSettings(BaseSettings):
    """Settings of ``skuscale serve``.

    Every field can be set from the environment with the ``SKUSCALE_`` prefix,
    e.g. ``SKUSCALE_BUNDLE=/srv/bundle``, ``SKUSCALE_DB_URL=postgresql+psycopg://...``,
    ``SKUSCALE_TOKENS='{"<sha256 of token>": "reviewer"}'``.
    """

    model_config = SettingsConfigDict(env_prefix="SKUSCALE_", extra="ignore")

    bundle: Path = Field(description="Bundle folder (read-only: its checksums are verified on load).")
    data_dir: Path = Field(default=Path("skuscale-data"), description="Image store and default SQLite database.")
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/skuscale.db.")
    db_schema: str | None = Field(default=None, description="PostgreSQL schema to use (created if missing).")
    tokens: dict[str, Role] = Field(
        default_factory=dict, description="sha256 hex of each bearer token -> role (device or reviewer)."
    )
    reference_manifest: Path | None = Field(
        default=None, description="CSV path,sku[,category] of reference pack shots shown on the review page."
    )
    enrol_threshold: float | None = Field(
        default=None, gt=0, le=1.01,
        description="Auto-accept threshold of enrolled SKUs; default: the router's category, else global threshold.",
    )
    max_image_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0)
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    max_batch: int = Field(default=32, gt=0)
    max_enrol_images: int = Field(default=64, gt=0)
    accuracy_window: int = Field(default=200, gt=0, description="Labelled events per SKU in the rolling accuracy.")
    onnx_threads: int | None = Field(default=None, gt=0)
    webhook_workers: bool = Field(default=True, description="Run the outbox delivery thread in this process.")
    webhook_poll_s: float = Field(default=0.5, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_backoff_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles every attempt.")
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_max_attempts: int = Field(default=12, gt=0)

    @field_validator("tokens")
    @classmethod
    def _check_token_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _HEX64.match(k)]
        if bad:
            raise ValueError("token keys must be sha256 hex digests (64 lowercase hex characters), not tokens")
        return value

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("db_schema must be a lowercase identifier")
        return value

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'skuscale.db').resolve()}"
