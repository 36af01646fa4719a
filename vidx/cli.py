"""The `vidx` command line: one way in to every part of the system.

Each command group lives in its own module under `vidx.commands`; this module only builds the root
group, registers them, and turns errors into messages and exit codes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from indexer.crash_reports import report_crashes
from indexer.host_memory import limit_malloc_arenas
from schemas.errors import VidxError
from vidx import __version__
from vidx.commands import bench, demo, index, models, search, serve
from vidx.commands import job as job_cmds
from vidx.commands import person as person_cmds
from vidx.commands import schedule as schedule_cmds
from vidx.commands.common import Context
from vidx.output import err


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidx")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="VIDX_CACHE_DIR",
              help="Model and photo cache [default: ~/.cache/vidx; env VIDX_CACHE_DIR].")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, verbose: int) -> None:
    """Index video archives for faces and people, then find who appears where and when."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(cache_dir)


cli.add_command(models.models)
cli.add_command(bench.bench)
cli.add_command(index.index_cmd)
cli.add_command(job_cmds.job)
cli.add_command(schedule_cmds.schedule)
cli.add_command(schedule_cmds.scheduler_cmd)
cli.add_command(search.search_cmd)
cli.add_command(person_cmds.person)
cli.add_command(person_cmds.people)
cli.add_command(serve.serve_cmd)
cli.add_command(demo.demo_cmd)


def main() -> None:
    limit_malloc_arenas()  # a worker's many threads would otherwise each grow an arena (indexer/host_memory.py)
    report_crashes()  # a crash in a library prints every thread's stack, and so does `kill -USR1 PID`
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VidxError as exc:
        err.print(f"error: {exc.describe()}", markup=False, style="red")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
