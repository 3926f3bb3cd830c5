"""The security suite shares the link handler's fixtures: a Runtime on the test database with a frozen clock."""

from __future__ import annotations

import pytest

from tests.support.settings import make_settings
from tests.web.conftest import app, client, clock, runtime  # noqa: F401 (fixtures)
from worker.services.runtime import Runtime
from worker.web import create_app


@pytest.fixture
def make_app(tmp_path, database_url, session_factory, clock):  # noqa: F811 (the fixture above)
    """``make_app(secret_keys="k1,k2", base_url=...)``: an app on the test database with other settings."""
    runtimes = []

    def build(**overrides):
        built = Runtime(make_settings(tmp_path, database_url=database_url, **overrides), clock=clock)
        built.__dict__["session_factory"] = session_factory
        built.__dict__["engine"] = session_factory.kw["bind"]
        runtimes.append(built)
        return create_app(built)

    yield build
    for built in runtimes:
        built.__dict__.pop("engine")  # shared by the session: not ours to dispose
        built.close()
