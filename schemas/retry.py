"""The one retry policy: call again with exponential backoff while an error is transient, up to a number of
attempts or a time budget, then give up with an error that says how long it tried.

Used for SQL transactions (catalog), output writes (indexer.write) and object-store reads (indexer.storage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int | None = None
    """Give up after this many calls (None: only the time budget counts)."""
    seconds: float | None = None
    """Give up once this long has passed since the first call (None: only the attempts count)."""
    first_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts is None and self.seconds is None:
            raise ValueError("a retry policy needs a number of attempts or a time budget")


@dataclass(frozen=True)
class GaveUp:
    """What the last failure was, after how many attempts and how long: for the caller's final error."""

    error: BaseException
    attempts: int
    seconds: float


def call_with_retries(fn: Callable[[], R], policy: RetryPolicy, *, transient: Callable[[BaseException], bool],
                      give_up: Callable[[GaveUp], BaseException],
                      on_retry: Callable[[BaseException, float], None] | None = None,
                      errors: tuple[type[BaseException], ...] = (Exception,)) -> R:
    """fn() until it returns. An error of `errors` that is not `transient` propagates at once; a transient one
    is retried after a delay that doubles from `first_delay_s` (at most `max_delay_s`, never past the time
    budget) until the policy's attempts or seconds run out, then `give_up` makes the error raised (chained to
    the last failure). `on_retry` hears of each retry and its delay (to log it)."""
    started = time.monotonic()
    delay, attempts = policy.first_delay_s, 0
    while True:
        attempts += 1
        try:
            return fn()
        except errors as exc:
            if not transient(exc):
                raise
            waited = time.monotonic() - started
            out_of_attempts = policy.attempts is not None and attempts >= policy.attempts
            out_of_time = policy.seconds is not None and waited >= policy.seconds
            if out_of_attempts or out_of_time:
                raise give_up(GaveUp(exc, attempts, waited)) from exc
            if policy.seconds is not None:
                delay = min(delay, policy.seconds - waited)
            if on_retry is not None:
                on_retry(exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
