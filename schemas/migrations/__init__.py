"""Versioned migrations of the SQL index (Alembic), applied in place when an index is opened.

Revision 0001 is the schema vidx 0.1 created with `create_all` (indexes from then have no
`alembic_version` table: they are recognised and stamped as 0001). Every later change to
`schemas.sql` comes with a revision here; tests/test_migrations.py fails when the models and the
migrations disagree. To write one after editing the models:

    python -m schemas.migrations revision -m "what changed"

which autogenerates it against a scratch SQLite index at the current head (read it, then fix it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from schemas.errors import VidxError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE = "0001"
"""The schema of indexes made before migrations existed (vidx 0.1, `create_all`)."""
_PG_LOCK_KEY = 0x76696478  # "vidx": serialises concurrent upgrades of one PostgreSQL database


class SchemaError(VidxError):
    """The SQL index has a schema this vidx cannot use."""


@dataclass(frozen=True)
class Migration:
    """What opening an index did to its schema."""

    before: str | None
    """The revision found (None: a new, empty database)."""
    after: str


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations under {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _is_known(revision: str) -> bool:
    try:
        return script().get_revision(revision) is not None
    except Exception:  # alembic raises several types for an unknown or malformed id
        return False


def upgrade(engine: Engine, *, where: str | None = None) -> Migration:
    """Bring the index at `engine` to the head revision, in place; data is kept.

    A database newer than this vidx knows is refused with SchemaError (downgrading vidx would
    otherwise silently misread it). Concurrent openers are safe: PostgreSQL serialises them with an
    advisory lock, SQLite with its write lock (BEGIN IMMEDIATE); the others then find the work done.
    """
    head = head_revision()
    with engine.connect() as conn:
        before = current_revision(conn)
    if before == head:
        return Migration(before, head)
    if before is not None and not _is_known(before):
        raise SchemaError(
            f"the SQL index has schema revision {before}, newer than this vidx knows (latest: {head})",
            path=where, hint="upgrade vidx to open it; it was written by a newer version")
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            elif conn.dialect.name == "sqlite":  # the write lock, before reading the revision (pysqlite defers BEGIN)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            before = current_revision(conn)
            if before is None and "videos" in inspect(conn).get_table_names():
                log.info("SQL index from before migrations: recording it as revision %s", BASELINE)
                command.stamp(alembic_config(conn), BASELINE)
                before = BASELINE
            if before != head:
                command.upgrade(alembic_config(conn), "head")
    except (OperationalError, ProgrammingError) as exc:
        with engine.connect() as conn:  # a concurrent opener (SQLite has no lock for DDL) may have done it
            if current_revision(conn) == head:
                return Migration(before, head)
        raise SchemaError(f"cannot upgrade the SQL index to schema {head}: {exc.orig}", path=where) from exc
    if before != head:
        log.info("SQL index schema upgraded from %s to %s", before or "empty", head)
    return Migration(before, head)


def schema_diff(engine: Engine) -> list[Any]:
    """Differences between the database's schema and the models (empty when they agree)."""
    from schemas.sql import Base
    from schemas.vectors import include_name

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
        return list(compare_metadata(ctx, Base.metadata))
