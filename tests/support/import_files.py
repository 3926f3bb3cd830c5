"""Import files for the command's tests: a CSV of mailboxes, one row per dict."""

from __future__ import annotations

import csv
from pathlib import Path

from worker.rules.import_rows import EXPIRY_COLUMNS, REQUIRED_COLUMNS

#: The required columns, the expiry's and the language.
HEADER = [*REQUIRED_COLUMNS, *EXPIRY_COLUMNS, "language"]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in HEADER})
    return path


def mailbox_row(number: int, **overrides) -> dict:
    row = {
        "address": f"casella{number}@pec.provider.example.it",
        "account": f"cliente{number}@example.it",
        "holder_name": f"Titolare {number}",
        "holder_kind": "private",
        "reference_email": f"titolare{number}@example.it",
        "plan": "standard",
        "expires_on": "2027-03-31",
    }
    row.update(overrides)
    return row
