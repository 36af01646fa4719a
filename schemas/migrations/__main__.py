"""`python -m schemas.migrations revision -m MESSAGE`: autogenerate the next revision from the models."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from schemas.migrations import alembic_config, script, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m schemas.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write the next revision: what the models have that the head lacks")
    rev.add_argument("-m", "--message", required=True)
    sub.add_parser("heads", help="print the head revision")
    args = parser.parse_args()
    if args.cmd == "heads":
        print(script().get_current_head())
        return
    heads = [r.revision for r in script().walk_revisions()]
    next_id = f"{max((int(r) for r in heads if r.isdigit()), default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.sqlite'}")
        if heads:
            upgrade(engine)
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=args.message, autogenerate=True, rev_id=next_id)
        engine.dispose()


if __name__ == "__main__":
    main()
