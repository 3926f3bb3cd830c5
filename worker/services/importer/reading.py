"""Reading the import file: its records, checked one by one and staged as they are read."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from worker.rules.import_rows import CheckedFile, ImportProblem, RowChecker, check_header
from worker.rules.schedule import Stage
from worker.services.importer.writer import StagingWriter

Progress = Callable[[int], None]
Source = str | os.PathLike[str] | TextIO


@contextmanager
def open_source(source: Source) -> Iterator[TextIO]:
    """The file at a path (its bytes that are not UTF-8 reported per cell), or the stream given."""
    if isinstance(source, (str, os.PathLike)):
        # Bytes that are not UTF-8 become lone surrogates, reported per cell.
        with open(source, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            yield file
    else:
        yield source


def check_file(
    stream: TextIO,
    stages: tuple[Stage, ...],
    writer: StagingWriter,
    progress: Progress | None,
    chunk_rows: int,
) -> CheckedFile:
    """Check every record of ``stream`` and stage it with ``writer``, ``chunk_rows`` at a time.

    ``progress(done)`` every ``chunk_rows`` records: the records checked plus the rows written.
    """
    checked = CheckedFile()
    reader = csv.reader(stream)
    try:
        header_cells = next(reader, None)
    except csv.Error as error:
        checked.errors.append(ImportProblem(1, None, f"cannot be read as CSV: {error}"))
        return checked
    if not header_cells or not any(cell.strip() for cell in header_cells):
        checked.errors.append(ImportProblem(1, None, "the file is empty: the first line must name the columns"))
        return checked
    header = check_header(header_cells, checked.errors)
    if checked.errors:
        # Rows checked against a broken header would only add noise.
        return checked

    row_checker = RowChecker(header, stages, checked, writer.stage)
    writer.sync.position = row_checker.position
    check = row_checker.check
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # the reader goes on with the next record
            line += 1
            checked.errors.append(ImportProblem(line, None, f"cannot be read as CSV: {error}"))
            continue
        line += 1
        check(line, cells)
        if len(writer.rows) >= chunk_rows:
            writer.hand_over(upsert=not checked.errors)
        if progress is not None and (line - 1) % chunk_rows == 0:
            progress(line - 1 + writer.written)
    checked.records = line - 1
    return checked


def count_records(path: str | os.PathLike[str]) -> int:
    """The number of data records in a CSV file (its lines but the header), cheaply, for a progress bar."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)
