"""Waiting for another process (a Celery worker, a subprocess) to get something done: this moves no clock."""

from __future__ import annotations

import time


def wait_until(predicate, *, timeout: float, what: str, every: float = 0.05):
    """The predicate's first true value, polled every ``every`` seconds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
