"""Initial schema: images, events, feedback, enrolments, webhooks, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(200), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False, index=True),
        sa.Column("band", sa.String(8), nullable=False, index=True),
        sa.Column("sku", sa.String(128), nullable=False, index=True),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("ood_score", sa.Float, nullable=False),
        sa.Column("category", sa.String(128), nullable=True, index=True),
        sa.Column("category_confidence", sa.Float, nullable=True),
        sa.Column("candidates", sa.JSON, nullable=False),
        sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=True),
        sa.Column("status", sa.String(8), nullable=False, index=True),
        sa.Column("final_sku", sa.String(128), nullable=True),
        sa.Column("resolution", sa.String(16), nullable=True),
        sa.Column("proposed_sku", sa.String(128), nullable=True),
        sa.Column("resolved_at", sa.DateTime, nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), sa.ForeignKey("events.id"), nullable=False, index=True),
        sa.Column("truth_sku", sa.String(200), nullable=True),
        sa.Column("not_a_product", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    )
    op.create_table(
        "enrolments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sku", sa.String(128), nullable=False, index=True),
        sa.Column("category", sa.String(128), nullable=True),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("n_images", sa.Integer, nullable=False),
        sa.Column("embeddings", sa.LargeBinary, nullable=False),
        sa.Column("image_sha256s", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", sa.String(32), sa.ForeignKey("webhooks.id"), nullable=False, index=True),
        sa.Column("event_id", sa.String(32), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(80), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(12), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False, index=True),
        sa.Column("locked_until", sa.DateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("outbox", "webhooks", "enrolments", "feedback", "events", "images"):
        op.drop_table(table)
