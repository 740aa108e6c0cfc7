"""Alembic environment: always given a live connection by ``inwall.store.migrate``."""

from __future__ import annotations

from alembic import context

from inwall.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by running alembic by hand
    raise SystemExit("run migrations through inwall (Database.migrate), which supplies the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
