from sqlalchemy import select, text

from config.settings import Settings
from worker.services.runtime import Runtime, pool_size
from worker.store.models import Account


def test_database_is_migrated_and_empty(session_factory):
    with session_factory() as session:
        session.add(Account(login="someone@example.it"))
        session.commit()
        assert session.scalars(select(Account.login)).all() == ["someone@example.it"]


def test_the_runtime_engine_takes_any_sqlite_url(tmp_path, monkeypatch):
    """The runtime's pool sizes suit a SQLite file; an in-memory database has one connection per
    thread, nothing to size, and a relative path is read from the working directory (its folder
    must exist: PEC_RENEWAL_DATABASE_URL refuses one that does not)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for url, pooled in (("sqlite://", False), ("sqlite:///:memory:", False), ("sqlite:///data/renewals.db", True)):
        runtime = Runtime(Settings.from_env({"PEC_RENEWAL_DATABASE_URL": url, "PEC_RENEWAL_SECRET_KEYS": "k" * 40}))
        with runtime.engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        assert (
            (runtime.engine.pool.size() == pool_size(runtime.settings))
            if pooled
            else not hasattr(runtime.engine.pool, "overflow")
        )
        runtime.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]
    assert (tmp_path / "data" / "renewals.db").exists()
