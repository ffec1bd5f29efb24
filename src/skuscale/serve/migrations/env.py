"""Alembic environment: runs on the connection handed over by :func:`skuscale.serve.db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from skuscale.serve.db import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # ``alembic -x url=... upgrade head`` from a shell.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
