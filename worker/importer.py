"""Import mailboxes from a CSV file: ``pec-renewal import mailboxes FILE.csv``.

The whole file is checked first; a file with any bad row is refused whole
with :class:`ImportRefused`, listing every problem as
``line N, column NAME: what is wrong`` (N counts CSV records, the header is
line 1).  A good file is written in one transaction with bulk upserts, in
chunks: accounts by login, domains by name, holders by (account, digest of the
holder data), mailboxes by address.  Re-importing a file updates.

The checked rows are kept in memory between the two steps, as tuples (about
1 KB a row; a million rows peak at about 1.6 GB), so the file is read once
and each row is parsed once.
"""

from __future__ import annotations

import calendar
import csv
import difflib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import NamedTuple, TextIO, TypeVar

from sqlalchemy import Connection, Table, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker import holder_data
from worker.db import dialect_insert
from worker.holder_data import HolderData
from worker.models import Account, Domain, Holder, Mailbox, Plan
from worker.schedule import Stage, first_action_on

REQUIRED_COLUMNS = ("address", "account", "holder_name", "holder_kind", "reference_email", "plan")
#: ``expires_on``, or for a mailbox on a customer domain ``domain`` and ``domain_expires_on``.
EXPIRY_COLUMNS = ("expires_on", "domain", "domain_expires_on")
OPTIONAL_COLUMNS = (
    "auto_renew",
    "payment_method",
    "card_expiry",
    "renewal_years",
    "promo",
    "extra_space_gb",
    "extra_archive_gb",
    "used_space_mb",
    "tax_code",
    "vat_number",
    "einvoice_code",
    "language",
    "postal_address",
    "cig",
    "cup",
)
KNOWN_COLUMNS = REQUIRED_COLUMNS + EXPIRY_COLUMNS + OPTIONAL_COLUMNS

PLANS = tuple(plan.value for plan in Plan)
LANGUAGES = ("it", "en")
MAX_RENEWAL_YEARS = 5
MAX_PROMO_RENEWAL_YEARS = 2
MAX_STANDARD_EXTRA_SPACE_GB = 1
PLANS_WITH_ARCHIVE = (Plan.PRO.value, Plan.PREMIUM.value)
INT32_MAX = 2**31 - 1
ACCOUNT_MAX = 254

#: Rows per bulk statement, and how often ``progress`` is called.
CHUNK_ROWS = 5000
#: Values per ``IN (...)`` lookup.
LOOKUP_CHUNK = 1000

#: The columns a re-import overwrites (all but the address and the id).
MAILBOX_UPDATE_COLUMNS = (
    "account_id",
    "holder_id",
    "reference_email",
    "domain_id",
    "plan",
    "extra_space_gb",
    "extra_archive_gb",
    "used_space_mb",
    "expires_on",
    "auto_renew",
    "payment_method",
    "card_expires_on",
    "renewal_years",
    "promo",
    "language",
    "next_action_on",
)

# Any C0/C1 control character (CR and LF included) or a byte that was not UTF-8
# (kept as a lone surrogate by the "surrogateescape" error handler).
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
_UINT_RE = re.compile(r"[0-9]{1,10}")
_PAYMENT_METHOD_RE = re.compile(r"[A-Za-z0-9_\-.]{1,200}")
_DOMAIN_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_BOOLEANS = {"true": True, "false": False}
# Known names, mapped to one string object each: a million rows share them.
_PLANS = {plan: plan for plan in PLANS}
_LANGUAGES = {language: language for language in LANGUAGES}

Progress = Callable[[int], None]
_T = TypeVar("_T")
#: Records a problem with a column, unless that column already has one.
_Problem = Callable[[str, str], object]


@dataclass(frozen=True)
class ImportProblem:
    """One thing wrong in the file.  ``str()`` is ``line N, column NAME: message``."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        if self.column is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, column {self.column}: {self.message}"


class ImportRefused(Exception):
    """The file has problems; nothing was written.  ``errors`` lists them all, in file order."""

    def __init__(self, errors: list[ImportProblem]):
        self.errors = errors
        super().__init__(f"{len(errors)} problem(s) in the file; nothing was imported")


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    domains: int = 0
    warnings: list[str] = field(default_factory=list)


class _MailboxRow(NamedTuple):
    """One checked row, normalised, waiting to be written."""

    address: str
    login: str
    holder_key: str
    domain: str | None
    expires_on: date
    plan: str
    extra_space_gb: int
    extra_archive_gb: int
    used_space_mb: int
    auto_renew: bool
    payment_method: str | None
    card_expires_on: date | None
    renewal_years: int
    promo: bool
    language: str


@dataclass
class _CheckedFile:
    rows: list[_MailboxRow] = field(default_factory=list)
    holders: dict[tuple[str, str], HolderData] = field(default_factory=dict)
    domains: dict[str, date] = field(default_factory=dict)
    errors: list[ImportProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Records read after the header, blank ones included.
    records: int = 0


# --------------------------------------------------------------------------
# Public API


def import_mailboxes(
    session_factory: sessionmaker[Session],
    source: str | os.PathLike[str] | TextIO,
    *,
    stages: tuple[Stage, ...],
    progress: Progress | None = None,
) -> ImportReport:
    """Check the whole CSV ``source`` (a path or a text stream), then upsert it in one transaction.

    Raises :class:`ImportRefused` listing every problem when any row is bad;
    then nothing is written.  ``progress(rows_done)`` is called every
    ``CHUNK_ROWS`` rows: ``rows_done`` climbs to the number of records while
    the file is checked, then on to twice that while the rows are written (a
    progress bar's total is ``2 * count_records(path)``).
    """
    with _open(source) as stream:
        checked = _check_file(stream, progress)
    if checked.errors:
        raise ImportRefused(checked.errors)
    report = ImportReport(rows=len(checked.rows), domains=len(checked.domains), warnings=checked.warnings)
    with session_factory() as session, session.begin():
        _write(session, checked, stages, report, progress)
    return report


def count_records(path: str | os.PathLike[str]) -> int:
    """The number of data records in a CSV file (its lines but the header), cheaply, for a progress bar."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


# --------------------------------------------------------------------------
# Reading and checking


@contextmanager
def _open(source: str | os.PathLike[str] | TextIO) -> Iterator[TextIO]:
    if isinstance(source, (str, os.PathLike)):
        # Bytes that are not UTF-8 become lone surrogates, reported per cell.
        with open(source, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            yield file
    else:
        yield source


def _check_file(stream: TextIO, progress: Progress | None) -> _CheckedFile:
    checked = _CheckedFile()
    reader = csv.reader(stream)
    try:
        header_cells = next(reader, None)
    except csv.Error as error:
        checked.errors.append(ImportProblem(1, None, f"cannot be read as CSV: {error}"))
        return checked
    if not header_cells or not any(cell.strip() for cell in header_cells):
        checked.errors.append(ImportProblem(1, None, "the file is empty: the first line must name the columns"))
        return checked
    header = _check_header(header_cells, checked.errors)
    if checked.errors:
        # Rows checked against a broken header would only add noise.
        return checked

    row_checker = _RowChecker(header, checked)
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # the reader goes on with the next record
            line += 1
            checked.errors.append(ImportProblem(line, None, f"cannot be read as CSV: {error}"))
            continue
        line += 1
        row_checker.check(line, cells)
        if progress is not None and (line - 1) % CHUNK_ROWS == 0:
            progress(line - 1)
    checked.records = line - 1
    if progress is not None and checked.records % CHUNK_ROWS:
        progress(checked.records)
    checked.errors.sort(key=lambda problem: problem.line)
    return checked


def _check_header(cells: list[str], errors: list[ImportProblem]) -> list[str]:
    """The normalised column names; problems go to ``errors`` as line 1."""
    names = [cell.strip().lower() for cell in cells]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            errors.append(ImportProblem(1, f"#{position}", "the header cell is empty: name the column or remove it"))
        elif _BAD_CHAR_RE.search(name):
            errors.append(ImportProblem(1, _printable(name), _bad_char_problem(name)))
        elif name in seen:
            errors.append(ImportProblem(1, name, "is in the header twice"))
        elif name not in KNOWN_COLUMNS:
            close = difflib.get_close_matches(name, KNOWN_COLUMNS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(ImportProblem(1, name, f"is not a known column{hint}"))
        seen.add(name)
    for name in REQUIRED_COLUMNS:
        if name not in seen:
            errors.append(ImportProblem(1, name, "is missing from the header"))
    if "expires_on" not in seen and "domain" not in seen and "domain_expires_on" not in seen:
        errors.append(
            ImportProblem(
                1,
                "expires_on",
                "is missing from the header (or, for mailboxes on a customer domain, give domain and domain_expires_on)",
            )
        )
    elif "domain" in seen and "domain_expires_on" not in seen:
        errors.append(ImportProblem(1, "domain_expires_on", "is missing from the header: a domain needs its expiry"))
    elif "domain_expires_on" in seen and "domain" not in seen:
        errors.append(ImportProblem(1, "domain", "is missing from the header: domain_expires_on needs it"))
    return names


def _printable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD, safe to print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _bad_char_problem(value: str) -> str:
    match = _BAD_CHAR_RE.search(value)
    assert match is not None
    char = match.group()
    if "\udc80" <= char <= "\udcff":
        byte = ord(char) - 0xDC00
        return f"is not UTF-8 (byte 0x{byte:02X} at character {match.start() + 1}): save the file as UTF-8"
    if char in "\r\n":
        return "contains a line break"
    return f"contains the control character U+{ord(char):04X}"


class _RowChecker:
    """Checks one record after another, keeping what rows must agree on across the file."""

    def __init__(self, header: list[str], checked: _CheckedFile):
        self.header = header
        self.width = len(header)
        self.position = {name: index for index, name in enumerate(header)}
        self.checked = checked
        self.address_lines: dict[str, int] = {}
        self.domain_lines: dict[str, int] = {}

    def check(self, line: int, cells: list[str]) -> None:
        problems: dict[str, str] = {}

        def problem(column: str, message: str) -> None:
            problems.setdefault(column, message)

        joined = "".join(cells)
        if not joined.strip():
            return  # a blank line
        if _BAD_CHAR_RE.search(joined):
            for name, cell in zip(self.header, cells):
                if _BAD_CHAR_RE.search(cell):
                    problem(name, _bad_char_problem(cell))
        if len(cells) != self.width:
            column = self.header[min(len(cells), self.width - 1)]
            problem(
                column,
                f"the record has {len(cells)} fields but the header has {self.width}"
                " (quote values that contain a comma)",
            )
        else:
            # Cells with bad characters fail their own checks too; the first
            # problem of a cell is the one reported.
            row = self._check_values(line, dict(zip(self.header, cells)), problems)
            if row is not None:
                self.checked.rows.append(row)
        if problems:
            order = self.position
            for column in sorted(problems, key=lambda name: order.get(name, len(order))):
                self.checked.errors.append(ImportProblem(line, column, problems[column]))

    def _check_values(self, line: int, raw: dict[str, str], problems: dict[str, str]) -> _MailboxRow | None:
        """The checked row, or None when it has problems (added to ``problems``, the first per column)."""
        problem = problems.setdefault
        values = {name: value.strip() or None for name, value in raw.items()}
        get = values.get

        address = _required(get("address"), "address", problem)
        if address is not None:
            try:
                address = holder_data.normalise_email(address)
            except ValueError as error:
                problem("address", str(error))
                address = None
            else:
                earlier = self.address_lines.setdefault(address, line)
                if earlier != line:
                    problem("address", f"{address} is already on line {earlier}")

        login = _required(get("account"), "account", problem)
        if login is not None:
            if len(login) > ACCOUNT_MAX:
                problem("account", f"is {len(login)} characters long; at most {ACCOUNT_MAX}")
            elif any(char.isspace() for char in login):
                problem("account", f"{login!r} contains a space")

        holder, holder_problems = holder_data.check_holder(
            name=get("holder_name"),
            kind=get("holder_kind"),
            reference_email=get("reference_email"),
            tax_code=get("tax_code"),
            vat_number=get("vat_number"),
            einvoice_code=get("einvoice_code"),
            postal_address=get("postal_address"),
            cig=get("cig"),
            cup=get("cup"),
        )
        for holder_problem in holder_problems:
            problem(_HOLDER_COLUMNS.get(holder_problem.field, holder_problem.field), holder_problem.message)

        given_plan = _required(get("plan"), "plan", problem)
        plan = _PLANS.get(given_plan.lower()) if given_plan else None
        if given_plan is not None and plan is None:
            problem("plan", f"{given_plan!r} is not a plan: one of {', '.join(PLANS)}")

        domain = get("domain")
        domain_expires_on = _parse(get("domain_expires_on"), "domain_expires_on", _parse_date, problem)
        expires_on = _parse(get("expires_on"), "expires_on", _parse_date, problem)
        if domain is not None:
            try:
                domain = _normalise_domain(domain)
            except ValueError as error:
                problem("domain", str(error))
                domain = None
            if get("expires_on") is not None:
                problem(
                    "expires_on",
                    "must be empty for a mailbox on a domain: it takes the domain's expiry, domain_expires_on",
                )
            if get("domain_expires_on") is None:
                problem("domain_expires_on", "is required for a mailbox on a domain")
            if domain is not None and address is not None:
                address_domain = address.rpartition("@")[2]
                if address_domain != domain and not address_domain.endswith("." + domain):
                    problem("domain", f"the address {address} is not on {domain}")
            if domain is not None and domain_expires_on is not None:
                self._check_domain_expiry(line, domain, domain_expires_on, problem)
            expires_on = domain_expires_on
        elif get("domain_expires_on") is not None:
            problem("domain_expires_on", "is only for a mailbox on a domain: give domain too, or use expires_on")
        elif get("expires_on") is None:
            problem("expires_on", "is required (for a mailbox on a customer domain: domain and domain_expires_on)")

        auto_renew = _parse(get("auto_renew"), "auto_renew", _parse_bool, problem) or False
        promo = _parse(get("promo"), "promo", _parse_bool, problem) or False
        payment_method = get("payment_method")
        if payment_method is not None and not _PAYMENT_METHOD_RE.fullmatch(payment_method):
            problem(
                "payment_method",
                f"{payment_method!r} is not a payment token: 1 to 200 letters, digits, '_', '-' or '.'",
            )
        if auto_renew:
            if get("domain") is not None:
                problem("auto_renew", "must be false for a mailbox on a domain: it is renewed with its domain")
            elif payment_method is None:
                problem("auto_renew", "is true but payment_method is empty")
        card_expires_on = _parse(get("card_expiry"), "card_expiry", _parse_card_expiry, problem)

        renewal_years = _parse(get("renewal_years"), "renewal_years", _parse_uint, problem)
        if renewal_years is None:
            renewal_years = 1
        elif not 1 <= renewal_years <= MAX_RENEWAL_YEARS:
            problem("renewal_years", f"{renewal_years} is not a number of years from 1 to {MAX_RENEWAL_YEARS}")
        elif promo and renewal_years > MAX_PROMO_RENEWAL_YEARS:
            problem(
                "renewal_years",
                f"a promo mailbox renews for 1 or {MAX_PROMO_RENEWAL_YEARS} years, not {renewal_years}",
            )

        extra_space_gb = _parse(get("extra_space_gb"), "extra_space_gb", _parse_uint, problem) or 0
        if plan == Plan.STANDARD.value and extra_space_gb > MAX_STANDARD_EXTRA_SPACE_GB:
            problem(
                "extra_space_gb",
                f"standard allows at most {MAX_STANDARD_EXTRA_SPACE_GB} GB of extra space, not {extra_space_gb}",
            )
        extra_archive_gb = _parse(get("extra_archive_gb"), "extra_archive_gb", _parse_uint, problem) or 0
        if extra_archive_gb and plan is not None and plan not in PLANS_WITH_ARCHIVE:
            problem(
                "extra_archive_gb",
                f"{plan} has no archive: extra archive space is only for {' and '.join(PLANS_WITH_ARCHIVE)}",
            )
        used_space_mb = _parse(get("used_space_mb"), "used_space_mb", _parse_uint, problem) or 0

        language = _LANGUAGES.get((get("language") or "it").lower())
        if language is None:
            problem("language", f"{get('language')!r} is not a language: it or en")

        if holder is not None and address is not None:
            self._warn(line, address, holder.reference_email, domain)
        if problems:
            return None
        # Without problems, every value is there.
        assert address and login and holder and plan and language and expires_on is not None
        holder_key = holder.holder_key
        self.checked.holders.setdefault((login, holder_key), holder)
        return _MailboxRow(
            address=address,
            login=login,
            holder_key=holder_key,
            domain=domain,
            expires_on=expires_on,
            plan=plan,
            extra_space_gb=extra_space_gb,
            extra_archive_gb=extra_archive_gb,
            used_space_mb=used_space_mb,
            auto_renew=auto_renew,
            payment_method=payment_method,
            card_expires_on=card_expires_on,
            renewal_years=renewal_years,
            promo=promo,
            language=language,
        )

    def _check_domain_expiry(self, line: int, domain: str, expires_on: date, problem: _Problem) -> None:
        known = self.checked.domains.setdefault(domain, expires_on)
        earlier = self.domain_lines.setdefault(domain, line)
        if known != expires_on:
            problem(
                "domain_expires_on",
                f"{expires_on.isoformat()} differs from {known.isoformat()} given for {domain} on line {earlier}",
            )

    def _warn(self, line: int, address: str, reference_email: str, domain: str | None) -> None:
        if reference_email == address:
            self.checked.warnings.append(
                f"line {line}, column reference_email: is the mailbox itself; notices may never be read"
            )
            return
        if domain is not None:
            reference_domain = reference_email.rpartition("@")[2]
            if reference_domain == domain or reference_domain.endswith("." + domain):
                self.checked.warnings.append(
                    f"line {line}, column reference_email: {reference_email} is on {domain}, the domain this"
                    " mailbox depends on; if the domain expires, notices may never be read"
                )


#: Holder fields whose import column has another name.
_HOLDER_COLUMNS = {"name": "holder_name", "kind": "holder_kind"}


def _required(value: str | None, column: str, problem: _Problem) -> str | None:
    if value is None:
        problem(column, "is required")
    return value


def _parse(
    value: str | None, column: str, parser: Callable[[str], _T], problem: _Problem
) -> _T | None:
    """``parser(value)``, or None when the value is absent or bad (then ``problem`` is told why)."""
    if value is None:
        return None
    try:
        return parser(value)
    except ValueError as error:
        problem(column, str(error))
        return None


@lru_cache(maxsize=65536)
def _parse_date(text: str) -> date:
    if _DATE_RE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not a real date as YYYY-MM-DD")


@lru_cache(maxsize=4096)
def _parse_card_expiry(text: str) -> date:
    """YYYY-MM: the last day of that month."""
    match = _MONTH_RE.fullmatch(text)
    if match:
        year, month = int(match.group(1)), int(match.group(2))
        if year >= 1 and 1 <= month <= 12:
            return date(year, month, calendar.monthrange(year, month)[1])
    raise ValueError(f"{text!r} is not a month as YYYY-MM")


def _parse_uint(text: str) -> int:
    if _UINT_RE.fullmatch(text):
        number = int(text)
        if number <= INT32_MAX:
            return number
        raise ValueError(f"{text} is too large")
    raise ValueError(f"{text!r} is not a whole number of 0 or more")


def _parse_bool(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not true or false") from None


def _normalise_domain(text: str) -> str:
    name = text.lower().rstrip(".")
    if name.startswith("@"):
        name = name[1:]
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a domain name such as example.it")
    return name


# --------------------------------------------------------------------------
# Writing


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write(
    session: Session,
    checked: _CheckedFile,
    stages: tuple[Stage, ...],
    report: ImportReport,
    progress: Progress | None,
) -> None:
    connection = session.connection()
    account_ids = _upsert_accounts(connection, list(dict.fromkeys(row.login for row in checked.rows)))
    domain_ids = _upsert_domains(connection, checked.domains, stages)
    holder_ids = _upsert_holders(connection, checked.holders, account_ids)

    next_action_cache: dict[date, date | None] = {}

    def next_action(expires_on: date) -> date | None:
        try:
            return next_action_cache[expires_on]
        except KeyError:
            result = next_action_cache[expires_on] = first_action_on(stages, expires_on)
            return result

    mailboxes = Mailbox.__table__
    statement = dialect_insert(connection, mailboxes)
    statement = statement.on_conflict_do_update(
        index_elements=["address"],
        set_={name: statement.excluded[name] for name in MAILBOX_UPDATE_COLUMNS},
    )
    done = 0
    for chunk in _chunks(checked.rows, CHUNK_ROWS):
        addresses = [row.address for row in chunk]
        existing = sum(
            connection.execute(
                select(func.count()).select_from(mailboxes).where(mailboxes.c.address.in_(part))
            ).scalar_one()
            for part in _chunks(addresses, LOOKUP_CHUNK)
        )
        params = []
        for row in chunk:
            account_id = account_ids[row.login]
            params.append(
                {
                    "address": row.address,
                    "account_id": account_id,
                    "holder_id": holder_ids[(account_id, row.holder_key)],
                    "reference_email": checked.holders[(row.login, row.holder_key)].reference_email,
                    "domain_id": domain_ids[row.domain] if row.domain is not None else None,
                    "plan": row.plan,
                    "extra_space_gb": row.extra_space_gb,
                    "extra_archive_gb": row.extra_archive_gb,
                    "used_space_mb": row.used_space_mb,
                    "expires_on": row.expires_on,
                    "auto_renew": row.auto_renew,
                    "payment_method": row.payment_method,
                    "card_expires_on": row.card_expires_on,
                    "renewal_years": row.renewal_years,
                    "promo": row.promo,
                    "language": row.language,
                    "next_action_on": next_action(row.expires_on),
                }
            )
        connection.execute(statement, params)
        report.updated += existing
        report.created += len(chunk) - existing
        done += len(chunk)
        if progress is not None:
            progress(checked.records + done)


def _upsert_accounts(connection: Connection, logins: list[str]) -> dict[str, int]:
    """Insert the logins that are new; return the id of every login."""
    accounts = Account.__table__
    statement = dialect_insert(connection, accounts).on_conflict_do_nothing(index_elements=["login"])
    for chunk in _chunks(logins, CHUNK_ROWS):
        connection.execute(statement, [{"login": login} for login in chunk])
    ids: dict[str, int] = {}
    for chunk in _chunks(logins, LOOKUP_CHUNK):
        ids.update(connection.execute(select(accounts.c.login, accounts.c.id).where(accounts.c.login.in_(chunk))).all())
    return ids


def _upsert_domains(connection: Connection, expiries: dict[str, date], stages: tuple[Stage, ...]) -> dict[str, int]:
    """Upsert the domains with their expiry, move every mailbox of a domain to it; return the ids."""
    if not expiries:
        return {}
    domains, mailboxes = Domain.__table__, Mailbox.__table__
    names = list(expiries)
    statement = dialect_insert(connection, domains)
    statement = statement.on_conflict_do_update(
        index_elements=["name"], set_={"expires_on": statement.excluded.expires_on}
    )
    for chunk in _chunks(names, CHUNK_ROWS):
        connection.execute(statement, [{"name": name, "expires_on": expiries[name]} for name in chunk])
    ids: dict[str, int] = {}
    for chunk in _chunks(names, LOOKUP_CHUNK):
        ids.update(connection.execute(select(domains.c.name, domains.c.id).where(domains.c.name.in_(chunk))).all())
    # Mailboxes of these domains that the file does not list follow the domain too.
    follow = (
        update(mailboxes)
        .where(mailboxes.c.domain_id == bindparam("b_domain_id"), mailboxes.c.expires_on != bindparam("b_expires_on"))
        .values(expires_on=bindparam("b_expires_on"), next_action_on=bindparam("b_next_action_on"))
    )
    for chunk in _chunks(names, CHUNK_ROWS):
        connection.execute(
            follow,
            [
                {
                    "b_domain_id": ids[name],
                    "b_expires_on": expiries[name],
                    "b_next_action_on": first_action_on(stages, expiries[name]),
                }
                for name in chunk
            ],
        )
    return ids


def _upsert_holders(
    connection: Connection,
    holders: dict[tuple[str, str], HolderData],
    account_ids: dict[str, int],
) -> dict[tuple[int, str], int]:
    """Insert the holder data that is new per account; return ids by (account id, holder key)."""
    table = Holder.__table__
    statement = dialect_insert(connection, table).on_conflict_do_nothing(index_elements=["account_id", "holder_key"])
    keys = list(holders)
    for chunk in _chunks(keys, CHUNK_ROWS):
        params = []
        for login, holder_key in chunk:
            holder = holders[(login, holder_key)]
            params.append(
                {
                    "account_id": account_ids[login],
                    "holder_key": holder_key,
                    "name": holder.name,
                    "kind": holder.kind,
                    "tax_code": holder.tax_code,
                    "vat_number": holder.vat_number,
                    "reference_email": holder.reference_email,
                    "postal_address": holder.postal_address,
                    "sdi_code": holder.sdi_code,
                    "einvoice_pec": holder.einvoice_pec,
                    "office_code": holder.office_code,
                    "cig": holder.cig,
                    "cup": holder.cup,
                }
            )
        connection.execute(statement, params)
    if connection.dialect.name == "postgresql" and len(keys) > CHUNK_ROWS:
        # Rows inserted by this transaction have no statistics yet; without
        # them PostgreSQL plans the lookups below as sequential scans.
        connection.exec_driver_sql("ANALYZE holders")
    ids: dict[tuple[int, str], int] = {}
    for chunk in _chunks(keys, LOOKUP_CHUNK):
        # Both columns of the unique index; the pairs are matched here.
        query = select(table.c.account_id, table.c.holder_key, table.c.id).where(
            table.c.account_id.in_({account_ids[login] for login, _ in chunk}),
            table.c.holder_key.in_([holder_key for _, holder_key in chunk]),
        )
        for account_id, holder_key, holder_id in connection.execute(query):
            ids[(account_id, holder_key)] = holder_id
    return ids
