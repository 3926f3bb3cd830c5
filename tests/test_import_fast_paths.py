"""The importer's fast paths for the common record give the answers of the full checks.

A record of printable ASCII skips the bad-character search and, when no cell
starts or ends with a space, the strip of every cell; an account name of
printable ASCII is searched for a space with ``in``.  Hypothesis feeds them
text that is mostly like a CSV record and sometimes not (control characters,
Unicode spaces, undecodable bytes kept as surrogates), and compares.
"""

from __future__ import annotations

from hypothesis import given, settings as hypothesis_settings, strategies as st

from worker.services import importer
from worker.services.importer import _BAD_CHAR_RE, _SPACE_RE, ImportProblem, _CheckedFile, _RowChecker, _stripped
from worker.rules.schedule import DEFAULT_STAGES

# Letters, the characters of real cells, every kind of space str.strip knows, control characters.
_CHARS = st.sampled_from(
    list("aZ09@.-_+/,'\"") + [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f", "\x85", "\xa0",
    "\u2003", "\u3000", "\u200b", "\udc80", "é", "€"]
)
_CELL = st.one_of(st.text(_CHARS, max_size=6), st.sampled_from(["", " ", "mario", " mario", "mario ", "2027-03-31"]))
_CELLS = st.lists(_CELL, min_size=1, max_size=8)


@given(cells=_CELLS)
@hypothesis_settings(max_examples=3000, deadline=None)
def test_printable_ascii_has_no_bad_character(cells):
    joined = "".join(cells)
    if joined.isascii() and joined.isprintable():
        assert not _BAD_CHAR_RE.search(joined)


@given(cells=_CELLS)
@hypothesis_settings(max_examples=3000, deadline=None)
def test_stripped_is_what_strip_says(cells):
    joined = "".join(cells)
    if joined.isascii() and joined.isprintable():
        assert _stripped("\x00".join(cells)) == all(cell == cell.strip() for cell in cells)


@given(login=st.text(_CHARS, max_size=12))
@hypothesis_settings(max_examples=3000, deadline=None)
def test_a_space_in_a_printable_ascii_account(login):
    if login.isascii() and login.isprintable():
        assert (" " in login) == bool(_SPACE_RE.search(login))


HEADER = ["address", "account", "holder_name", "holder_kind", "reference_email", "plan", "expires_on", "language"]
GOOD = ["user1@pec.example.it", "mario.rossi", "Mario Rossi", "private", "mario@example.it", "standard", "2027-03-31", "it"]


def _check(cells: list[str], fast: bool) -> tuple[list, list[ImportProblem], list[str]]:
    staged: list = []
    checked = _CheckedFile()
    checker = _RowChecker(HEADER, DEFAULT_STAGES, checked, lambda row, good: staged.append((row, good)))
    if fast:
        checker.check(2, list(cells))
    else:
        # The full path: every cell searched and stripped.
        original = importer._stripped
        try:
            importer._stripped = lambda joined: False
            checker.check(2, list(cells))
        finally:
            importer._stripped = original
    return staged, checked.errors, checked.warnings


@given(
    changes=st.lists(st.tuples(st.integers(0, len(HEADER) - 1), _CELL), max_size=4),
    width=st.sampled_from([len(HEADER)] * 5 + [len(HEADER) - 1, len(HEADER) + 1]),
)
@hypothesis_settings(max_examples=3000, deadline=None)
def test_a_record_is_checked_alike_on_both_paths(changes, width):
    cells = list(GOOD)
    for position, value in changes:
        cells[position] = value
    cells = (cells + [""])[:width]
    assert _check(cells, fast=True) == _check(cells, fast=False)
