"""outbox_queue: the messages still to be sent, in a narrow table; outbox_messages updated HOT

Every message was written three times in ``outbox_messages``: the insert, the relay's lease
(``next_attempt_at``, an indexed column) and the outcome (``status``, the predicate of the
pending and failed partial indexes).  Neither update could be HOT: each wrote a new version of
the wide row and an entry into the indexes, two thirds of a peak day's WAL.

The lease and the due time now live in ``outbox_queue`` (message id, ``next_attempt_at``,
``failed``): a narrow row written with the message, leased by the claim and deleted by the
outcome (sent, bounced) or kept with the next attempt's time (deferred) or marked ``failed``
(waiting for ``pec-renewal outbox retry``, found by a small partial index).  ``outbox_messages``
keeps every column, but no index names one that the outcome changes, and ``fillfactor`` 50
leaves room on each page for every row's new version: the outcome is a HOT update.  A relay
settles a whole batch of neighbouring rows in groups, each group's old versions still live
until its commit: with 85 only a third of the outcomes found room (bench/daily_peak.py,
HOT ratio 0.34-0.40), with 50 all of them (1.0), for a heap twice the size.

The move is set-based: the table is created bare, filled with one ``INSERT … SELECT`` of the
pending and failed messages, then its primary key, foreign key and indexes are built once, and
the two partial indexes of ``outbox_messages`` are dropped.  ``ALTER TABLE … SET (fillfactor)``
rewrites nothing: pages written from then on keep the free space.

Locks and time (PostgreSQL, which runs the whole upgrade in one transaction):

- ``outbox_messages`` is locked ``SHARE`` from the start: reads (the report, the desk, the
  gauges) go on; every write to it (a notice batch, an order, the relay) waits until the
  commit.  Stop beat and the workers for the upgrade, as for any migration.
- The copy reads the pending index only (the messages still to send: none after a finished
  peak day, 20,000 in the middle of one), and the failed index; the new table's indexes are
  built over those rows.
- Dropping the two partial indexes and setting the fillfactor take ``ACCESS EXCLUSIVE`` on
  ``outbox_messages`` (catalog changes, no rewrite) until the commit, milliseconds later.
- Measured on 1M mailboxes and 200,000 outbox messages of which 20,000 pending (2 vCPU,
  PostgreSQL 15): see docs/operations.md, "Upgrading a live fleet to 0016".  The time grows
  with the pending and failed messages, not with the outbox's size.

On SQLite the same steps run, ``batch_alter_table`` rebuilding the new table for its keys.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 08:30:00
"""
from alembic import op
import sqlalchemy as sa

import worker.store.models


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

_QUEUE_STORAGE = {
    'fillfactor': '70',
    'autovacuum_vacuum_scale_factor': '0.0',
    'autovacuum_vacuum_threshold': '5000',
    'autovacuum_analyze_scale_factor': '0.0',
    'autovacuum_analyze_threshold': '5000',
}


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == 'postgresql'
    if postgresql:
        # No message written between the copy and the drop of the indexes; reads go on.
        op.execute('LOCK TABLE outbox_messages IN SHARE MODE')
    op.create_table(
        'outbox_queue',
        sa.Column('outbox_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('next_attempt_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('failed', sa.Boolean(), nullable=False),
        postgresql_with=_QUEUE_STORAGE,
    )
    op.execute(
        "INSERT INTO outbox_queue (outbox_message_id, next_attempt_at, failed) "
        "SELECT id, next_attempt_at, false FROM outbox_messages WHERE status = 'pending' "
        "UNION ALL "
        "SELECT id, NULL, true FROM outbox_messages WHERE status = 'failed'"
    )
    with op.batch_alter_table('outbox_queue') as batch_op:
        batch_op.create_primary_key('pk_outbox_queue', ['outbox_message_id'])
        batch_op.create_foreign_key(
            'fk_outbox_queue_outbox_message_id_outbox_messages', 'outbox_messages', ['outbox_message_id'], ['id'],
            ondelete='CASCADE',
        )
    op.create_index('ix_outbox_queue_next_attempt_at', 'outbox_queue', ['next_attempt_at'], unique=False)
    op.create_index(
        'ix_outbox_queue_failed', 'outbox_queue', ['outbox_message_id'], unique=False,
        postgresql_where=sa.text('failed'), sqlite_where=sa.text('failed'),
    )
    op.drop_index('ix_outbox_messages_failed', table_name='outbox_messages')
    op.drop_index('ix_outbox_messages_pending', table_name='outbox_messages')
    if postgresql:
        op.execute('ALTER TABLE outbox_messages SET (fillfactor = 50)')


def downgrade() -> None:
    if op.get_context().dialect.name == 'postgresql':
        op.execute('ALTER TABLE outbox_messages RESET (fillfactor)')
    op.create_index(
        'ix_outbox_messages_pending', 'outbox_messages', ['next_attempt_at'], unique=False,
        postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        'ix_outbox_messages_failed', 'outbox_messages', ['id'], unique=False,
        postgresql_where=sa.text("status = 'failed'"), sqlite_where=sa.text("status = 'failed'"),
    )
    # The lease lived on the message: a leased message keeps its lease's end.
    op.execute(
        'UPDATE outbox_messages SET next_attempt_at = '
        '(SELECT next_attempt_at FROM outbox_queue WHERE outbox_queue.outbox_message_id = outbox_messages.id) '
        'WHERE id IN (SELECT outbox_message_id FROM outbox_queue WHERE NOT failed)'
    )
    op.drop_table('outbox_queue')
