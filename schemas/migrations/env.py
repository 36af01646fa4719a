"""Alembic environment: vidx hands it an open connection (schemas.migrations.upgrade), never a URL."""

from alembic import context

from schemas.sql import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run vidx migrations through schemas.migrations (upgrade, or python -m schemas.migrations)")
# Batch mode rewrites tables where SQLite cannot ALTER them; compare_type makes autogenerate see type changes.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
