from sqlalchemy import select

from worker.models import Account


def test_database_is_migrated_and_empty(session_factory):
    with session_factory() as session:
        session.add(Account(login="someone@example.it"))
        session.commit()
        assert session.scalars(select(Account.login)).all() == ["someone@example.it"]
