"""Every setting the program reads is documented: in ``docs/settings.md`` with its default and
meaning, and named in the README's settings section.

The names are those :meth:`Settings.from_env` actually asks the environment for, recorded
while it reads an empty one, so a new setting cannot be added without its documentation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from config.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]


class RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key, default=None):
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_read() -> set[str]:
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    return {name.removeprefix(PREFIX) for name in environment.asked if name.startswith(PREFIX)}


def test_the_recording_sees_the_settings_read():
    names = settings_read()
    assert {"DATABASE_URL", "SECRET_KEYS", "BASE_URL", "STRIPE_API_BASE"} <= names


def test_every_setting_has_a_row_in_docs_settings():
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    rows = " ".join(line for line in text.splitlines() if line.startswith("| `"))
    missing = sorted(name for name in settings_read() if f"`{name}`" not in rows)
    assert not missing, f"settings read by config/settings.py but not in docs/settings.md: {missing}"


def test_every_setting_is_named_in_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Settings") :]
    section = section[: section.index("\n## ", 1)]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    missing = sorted(settings_read() - named)
    assert not missing, f"settings read by config/settings.py but not named in the README: {missing}"
