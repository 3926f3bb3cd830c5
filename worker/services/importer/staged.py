"""The staging table: the checked rows of one import, in the import's transaction.

Rows are staged as they are checked, good and bad alike (see
:data:`~worker.rules.import_rows.STAGED_COLUMNS`); the rules across rows
read it at the end, and the upserts read each chunk of good rows from it.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, Index, Integer, MetaData, Table, Text

from worker.rules.import_rows import HOLDER_COLUMNS, STAGED_COLUMNS

#: One row per checked record (see :data:`STAGED_COLUMNS`).
STAGING = Table(
    "import_rows",
    MetaData(),
    Column("line", Integer),
    Column("seq", Integer),
    Column("address", Text),
    Column("login", Text),
    Column("holder_key", Text),
    Column("domain", Text),
    Column("domain_expires_on", Date),
    Column("expires_on", Date),
    Column("plan", Text),
    Column("extra_space_gb", Integer),
    Column("extra_archive_gb", Integer),
    Column("used_space_mb", Integer),
    Column("auto_renew", Boolean),
    Column("payment_method", Text),
    Column("card_expires_on", Date),
    Column("renewal_years", Integer),
    Column("promo", Boolean),
    Column("language", Text),
    Column("next_action_on", Date),
    *(Column(name, Text) for name in HOLDER_COLUMNS),
    Index("ix_import_rows_seq", "seq"),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
assert tuple(STAGING.columns.keys()) == STAGED_COLUMNS
#: The staging columns the joins of the first chunk read, whose statistics the planner needs.
ANALYSED_COLUMNS = ("seq", "address", "login", "holder_key", "domain")
