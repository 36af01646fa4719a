"""How commands talk: results on stdout (a table, or JSON with --json), progress and logs on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console, RenderableType

NOT_A_TERMINAL_WIDTH = 100_000
"""Columns when output goes to a pipe or a file: a table or line is never cut or wrapped there (rich assumes 80)."""


def console(stderr: bool = False) -> Console:
    """A rich console: a terminal's own width; elsewhere (logs, pipes) wide enough for any line, unless COLUMNS
    says otherwise."""
    c = Console(stderr=stderr, highlight=False)
    if c.is_terminal or os.environ.get("COLUMNS"):
        return c
    return Console(stderr=stderr, highlight=False, width=NOT_A_TERMINAL_WIDTH)


err = console(stderr=True)
out = console()


def say(line: str) -> None:
    """A progress line on stderr."""
    err.print(f"[dim]·[/dim] {line}", soft_wrap=True)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        render(data)


def show(parts: Iterable[RenderableType]) -> None:
    """Lines and tables on stdout, one after another."""
    for part in parts:
        out.print(part)
