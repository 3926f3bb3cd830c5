"""The rules across rows, in SQL on the staging table: an address once, one expiry per domain.

What rows must agree on is kept by the database, not in this process, so
memory stays flat as the file grows.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from worker.rules.import_rows import CheckedFile, ImportProblem
from worker.services.importer.staged import STAGING


def check_across_rows(
    connection: Connection, checked: CheckedFile, *, addresses: bool = True, domains: bool = True
) -> None:
    """An address on two lines; a domain given two expiries.  Problems join ``checked.errors`` in file order.

    As when a row is checked, a column keeps its first problem: a cell that
    already has one gets no second.  ``addresses``, ``domains``: which of
    the two rules to check.
    """
    found: list[ImportProblem] = []
    if addresses:
        found.extend(repeated_addresses(connection))
    if domains:
        found.extend(domains_with_two_expiries(connection))
    if found:
        taken = {(problem.line, problem.column) for problem in checked.errors}
        checked.errors.extend(problem for problem in found if (problem.line, problem.column) not in taken)
    checked.sort_errors()


def repeated_addresses(connection: Connection) -> list[ImportProblem]:
    """Each line whose address an earlier line has."""
    rows = STAGING
    repeated = (
        select(rows.c.address, func.min(rows.c.line).label("first_line"))
        .where(rows.c.address.is_not(None))
        .group_by(rows.c.address)
        .having(func.count() > 1)
        .subquery()
    )
    return [
        ImportProblem(line, "address", f"{address} is already on line {first_line}")
        for line, address, first_line in connection.execute(
            select(rows.c.line, rows.c.address, repeated.c.first_line)
            .join(repeated, repeated.c.address == rows.c.address)
            .where(rows.c.line > repeated.c.first_line)
        )
    ]


def domains_with_two_expiries(connection: Connection) -> list[ImportProblem]:
    """Each line that gives its domain another expiry than the domain's first line."""
    rows = STAGING
    first = (
        select(rows.c.domain, func.min(rows.c.line).label("first_line"))
        .where(rows.c.domain.is_not(None))
        .group_by(rows.c.domain)
        .subquery()
    )
    earlier = rows.alias("earlier")
    return [
        ImportProblem(
            line,
            "domain_expires_on",
            f"{expires_on.isoformat()} differs from {known.isoformat()} given for {domain} on line {first_line}",
        )
        for line, domain, expires_on, first_line, known in connection.execute(
            select(
                rows.c.line, rows.c.domain, rows.c.domain_expires_on, first.c.first_line, earlier.c.domain_expires_on
            )
            .join(first, first.c.domain == rows.c.domain)
            .join(earlier, earlier.c.line == first.c.first_line)
            .where(rows.c.domain_expires_on != earlier.c.domain_expires_on)
        )
    ]
