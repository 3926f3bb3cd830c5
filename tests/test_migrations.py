"""The migrations build exactly the schema the models describe, on both databases: a model
changed without its migration (or the reverse) fails here, not on a provider's upgrade."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from worker.store import migrate
from worker.store.db import make_engine
from worker.store.models import Base


def differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def test_the_migrated_postgresql_schema_is_the_models(database_url):
    assert differences(database_url) == []


def test_the_migrated_sqlite_schema_is_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'pec-renewal.db'}"
    migrate.upgrade(url)
    assert differences(url) == []


def test_the_comparison_sees_a_missing_index(tmp_path):
    """Guards the two tests above: a schema one migration short differs from the models."""
    url = f"sqlite:///{tmp_path / 'pec-renewal.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_outbox_queue_failed")
    engine.dispose()
    assert [difference[0] for difference in differences(url)] == ["add_index"]
