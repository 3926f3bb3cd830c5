"""One record of an import file, checked without a database: spaces around cells, bad characters, accounts.

The checker reads the common record (printable ASCII, no cell to strip) on a
quicker path than the others; Hypothesis draws records of every kind, so that
whichever path a record takes, the answer is the one the rules give.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from worker.rules.import_rows import STAGED_COLUMNS, CheckedFile, ImportProblem, RowChecker
from worker.rules.schedule import DEFAULT_STAGES

HEADER = ["address", "account", "holder_name", "holder_kind", "reference_email", "plan", "expires_on", "language"]
GOOD = [
    "user1@pec.example.it",
    "mario.rossi",
    "Mario Rossi",
    "private",
    "mario@example.it",
    "standard",
    "2027-03-31",
    "it",
]

#: Every character ``str.strip`` removes that is not a control character.
SPACES = [" ", "\xa0", "\u1680", "\u2000", "\u2003", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
#: What a cell holds, bad characters aside: the characters of real cells, letters beyond ASCII, spaces.
_CELL_CHARS = st.sampled_from(list("aZ09@.-_+/,'\"") + ["é", "€", "ß", "\u200b", *SPACES])
_CELL = st.one_of(st.text(_CELL_CHARS, max_size=6), st.sampled_from(["", "mario", "2027-03-31", "pro", "EN"]))
_PADDING = st.text(st.sampled_from(SPACES), max_size=3)
#: Control characters (C0, C1, line breaks) and bytes that were not UTF-8 (as lone surrogates).
BAD_CHARS = ["\x00", "\x01", "\t", "\n", "\r", "\x0b", "\x1f", "\x7f", "\x85", "\x9f", "\udc80", "\udcff"]


Staged = list[tuple[tuple[str, ...], bool]]


def check(cells: list[str]) -> tuple[Staged, list[ImportProblem], list[str]]:
    """What checking ``cells`` as line 2 stages, and the problems and warnings it finds."""
    staged: Staged = []
    checked = CheckedFile()
    checker = RowChecker(HEADER, DEFAULT_STAGES, checked, lambda row, good: staged.append((row, good)))
    checker.check(2, list(cells))
    return staged, checked.errors, checked.warnings


def test_a_good_record_is_staged_with_its_values():
    staged, errors, warnings = check(GOOD)
    assert (errors, warnings) == ([], [])
    [(row, good)] = staged
    values = dict(zip(STAGED_COLUMNS, row, strict=True))
    assert good and (values["line"], values["seq"], values["address"], values["plan"]) == (
        "2",
        "1",
        GOOD[0],
        "standard",
    )
    assert (values["expires_on"], values["next_action_on"], values["renewal_years"]) == (
        "2027-03-31",
        "2026-12-31",
        "1",
    )


@given(
    changes=st.lists(st.tuples(st.integers(0, len(HEADER) - 1), _CELL), max_size=4),
    spaces=st.sampled_from([[" "], SPACES]),
    data=st.data(),
)
@hypothesis_settings(max_examples=1500, deadline=None)
def test_spaces_around_a_cell_change_nothing(changes, spaces, data):
    """Printable ASCII padded with ASCII spaces, and padding of every kind of space, around any cells."""
    cells = list(GOOD)
    for position, value in changes:
        cells[position] = value
    padding = st.text(st.sampled_from(spaces), max_size=3)
    padded = [data.draw(padding) + cell + data.draw(padding) for cell in cells]
    assert check(padded) == check([cell.strip() for cell in cells])


@given(
    column=st.integers(0, len(HEADER) - 1),
    bad=st.sampled_from(BAD_CHARS),
    where=st.integers(0, 30),
    padding=_PADDING,
)
@hypothesis_settings(max_examples=1000, deadline=None)
def test_a_bad_character_anywhere_in_a_cell_is_its_problem(column, bad, where, padding):
    cells = list(GOOD)
    cell = padding + cells[column]
    position = min(where, len(cell))
    cells[column] = cell[:position] + bad + cell[position:]
    if bad in "\r\n":
        expected = "contains a line break"
    elif "\udc80" <= bad <= "\udcff":
        expected = f"is not UTF-8 (byte 0x{ord(bad) - 0xDC00:02X} at character {position + 1}): save the file as UTF-8"
    else:
        expected = f"contains the control character U+{ord(bad):04X}"
    staged, errors, _ = check(cells)
    assert ImportProblem(2, HEADER[column], expected) in errors
    assert [good for _, good in staged] == [False]


@given(space=st.sampled_from(SPACES), where=st.integers(0, 11))
@hypothesis_settings(max_examples=300, deadline=None)
def test_an_account_with_a_space_of_any_kind_is_refused(space, where):
    login = "mario.rossi"
    login = login[:where] + space + login[where:]
    cells = [*GOOD[:1], login, *GOOD[2:]]
    staged, errors, _ = check(cells)
    if login.strip() != login:
        # A space at either end is not part of the account.
        assert errors == [] and dict(zip(STAGED_COLUMNS, staged[0][0], strict=True))["login"] == "mario.rossi"
    else:
        assert errors == [ImportProblem(2, "account", f"{login!r} contains a space")]


def test_a_record_with_another_number_of_fields():
    assert check(GOOD[:-1])[1] == [
        ImportProblem(2, "language", "the record has 7 fields but the header has 8 (quote values that contain a comma)")
    ]
    assert check([*GOOD, "x"])[1] == [
        ImportProblem(2, "language", "the record has 9 fields but the header has 8 (quote values that contain a comma)")
    ]
