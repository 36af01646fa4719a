"""How commands talk: results on stdout (a table, or JSON with --json), progress and logs on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def say(line: str) -> None:
    """A progress line on stderr."""
    err.print(f"[dim]·[/dim] {line}", soft_wrap=True)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        render(data)
