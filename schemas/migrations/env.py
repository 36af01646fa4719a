"""Alembic environment: vidx hands it an open connection (schemas.migrations.upgrade), never a URL."""

from alembic import context

from schemas.sql import Base
from schemas.vectors import include_name

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run vidx migrations through schemas.migrations (upgrade, or python -m schemas.migrations)")
# Batch mode rewrites tables where SQLite cannot ALTER them; compare_type makes autogenerate see type changes.
# include_name: the optional pgvector table (schemas/vectors.py) is not one of the models.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True,
                  include_name=include_name)
with context.begin_transaction():
    context.run_migrations()
