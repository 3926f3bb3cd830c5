"""The security suite runs on the link handler's fixtures (``tests/support/link_handler.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def runtime(link_runtime):
    """A security test's ``runtime`` is the link handler's (the suite's own mails through the SMTP server)."""
    return link_runtime
