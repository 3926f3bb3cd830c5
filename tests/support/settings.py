"""The tests' services and settings: the test database and Redis (``PEC_RENEWAL_TEST_DATABASE_URL``,
``PEC_RENEWAL_TEST_REDIS_URL``), the signing keys, and runtimes built on them."""

from __future__ import annotations

import os

from config.settings import Settings
from worker.services.runtime import Runtime

TEST_DATABASE_URL = os.environ.get(
    "PEC_RENEWAL_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_test"
)
TEST_REDIS_URL = os.environ.get("PEC_RENEWAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_SECRET_KEYS = "test-key-old-0123456789abcdef0123456789,test-key-new-0123456789abcdef0123456789"


def make_settings(tmp_path, **overrides) -> Settings:
    environ = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
    }
    environ.update({f"PEC_RENEWAL_{key.upper()}": str(value) for key, value in overrides.items()})
    return Settings.from_env(environ)


def smtp_runtime(tmp_path, database_url, session_factory, smtp, **overrides) -> Runtime:
    """A Runtime on the emptied test database that mails to ``smtp`` (the loopback server); the caller closes it."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        **overrides,
    )
    runtime = Runtime(settings)
    runtime.session_factory = session_factory
    return runtime
