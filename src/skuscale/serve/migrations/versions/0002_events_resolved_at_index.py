"""Index events.resolved_at: each /metrics scrape of a multi-worker service reads the resolutions since its last one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_resolved_at", "events", ["resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_events_resolved_at", table_name="events")
