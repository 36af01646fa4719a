"""The one exception family the CLI turns into a clean message and an exit code."""

from __future__ import annotations

import os


class VidxError(Exception):
    """An error a user can act on: what went wrong, about which file, and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, hint: str | None = None):
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text


class InputError(VidxError):
    """Bad input from the user: a path, an image, an option value."""

    exit_code = 2
