"""The link handler's tests: its fixtures and what it reads of pages are in ``tests/support/link_handler.py``."""

from __future__ import annotations

import pytest


@pytest.fixture
def runtime(link_runtime):
    """A link handler test's ``runtime`` is the link handler's (the suite's own mails through the SMTP server)."""
    return link_runtime
