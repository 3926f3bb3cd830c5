"""What an import did, what it kept, and why a file is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from worker.rules.import_rows import ImportProblem

__all__ = ["ChunkCounts", "ImportConflict", "ImportProblem", "ImportRefused", "ImportReport"]


@dataclass(frozen=True)
class ImportConflict:
    """A value of the file not applied: the worker's is kept.

    ``str()`` is ``line N, column NAME: kept VALUE (why); the file says VALUE``.
    """

    line: int
    column: str
    #: The worker's value, kept.
    kept: str
    #: Why it is kept: the renewal made here, or the later expiry an earlier import gave.
    reason: str
    #: What the file says, as a phrase (``the file says …``).
    given: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: kept {self.kept} ({self.reason}); {self.given}"


class ImportRefused(Exception):
    """The file has problems; nothing was written.  ``errors`` lists them all, in file order."""

    def __init__(self, errors: list[ImportProblem]):
        self.errors = errors
        super().__init__(f"{len(errors)} problem(s) in the file; nothing was imported")


@dataclass
class ImportReport:
    """What an import did (or, for a dry run, would do).

    Every good row is counted once: ``created`` (new), ``updated`` (a value
    changed), ``unchanged`` (every value already the file's) or
    ``conflicting`` (a value kept as the worker holds it, listed in
    ``conflicts``; the row's other values may have been applied).
    """

    rows: int = 0
    created: int = 0
    updated: int = 0
    domains: int = 0
    warnings: list[str] = field(default_factory=list)
    unchanged: int = 0
    #: Rows with at least one value kept as the worker holds it.
    conflicting: int = 0
    #: Every value kept, by line and column.
    conflicts: list[ImportConflict] = field(default_factory=list)
    #: Orders cancelled because the file renews their cycle elsewhere, by line.
    closed: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: Whether the bulk-load path was taken (PostgreSQL, into an empty fleet).
    bulk: bool = field(default=False, compare=False)
    #: Seconds per phase (the checking thread's CPU, each kind of SQL statement), for benchmarks.
    timings: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the seconds the block takes to ``timings[phase]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def add(self, counts: ChunkCounts) -> None:
        """Count what the rows of one chunk did."""
        self.created += counts.created
        self.updated += counts.updated
        self.unchanged += counts.unchanged
        self.conflicting += counts.conflicting


@dataclass(frozen=True)
class ChunkCounts:
    """What the rows of one chunk did; each row is in one count."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicting: int = 0
