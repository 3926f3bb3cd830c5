"""The import file's header and records: which columns, and what a good row is.

Pure: :class:`RowChecker` takes a record's cells and hands the row to stage
(its checked, normalised values, as text, in :data:`STAGED_COLUMNS` order) to
a callback; the problems it finds go to a list of :class:`ImportProblem`.
What rows must agree on (an address once, one expiry per domain) is checked
across the staged rows, by the import service.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from operator import itemgetter

from worker.rules import holder_data
from worker.rules.holder_data import HolderData
from worker.rules.import_values import (
    BAD_CHAR_RE,
    BOOLEANS,
    LANGUAGE_CODES,
    MAX_PROMO_RENEWAL_YEARS,
    MAX_RENEWAL_YEARS,
    MAX_STANDARD_EXTRA_SPACE_GB,
    PLAN_NAMES,
    PLANS_WITH_ARCHIVE,
    STANDARD,
    Problem,
    account_problem,
    bad_char_problem,
    check_bool,
    check_card_expiry,
    check_date,
    check_language,
    check_payment_method,
    check_plan,
    checked,
    normalise_domain,
    parse_uint,
    printable,
    stripped,
)
from worker.rules.schedule import Stage, first_action_on
from worker.rules.vocabulary import DEFAULT_LANGUAGE

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
    "billing_address",
    "billing_postcode",
    "billing_city",
    "billing_province",
    "billing_country",
)
KNOWN_COLUMNS = REQUIRED_COLUMNS + EXPIRY_COLUMNS + OPTIONAL_COLUMNS

#: Columns of a holder row, as staged.
HOLDER_COLUMNS = (
    "name",
    "kind",
    "reference_email",
    "tax_code",
    "vat_number",
    "postal_address",
    "sdi_code",
    "einvoice_pec",
    "office_code",
    "cig",
    "cup",
    "billing_address",
    "billing_postcode",
    "billing_city",
    "billing_province",
    "billing_country",
)
#: A staged row's values, in order.  A good row has every value and its ``seq``
#: (1, 2, … in file order); a bad row has only ``line`` and what rules across
#: rows look at (``address``, and ``domain`` with ``domain_expires_on``).
#: Every value is text, an empty string for an absent one.
STAGED_COLUMNS = (
    "line",
    "seq",
    "address",
    "login",
    "holder_key",
    "domain",
    "domain_expires_on",
    "expires_on",
    "plan",
    "extra_space_gb",
    "extra_archive_gb",
    "used_space_mb",
    "auto_renew",
    "payment_method",
    "card_expires_on",
    "renewal_years",
    "promo",
    "language",
    "next_action_on",
    *HOLDER_COLUMNS,
)
ADDRESS, DOMAIN, DOMAIN_EXPIRES_ON = (STAGED_COLUMNS.index(name) for name in ("address", "domain", "domain_expires_on"))
#: The staged values of a bad row between ``address`` and ``domain``, and after ``domain_expires_on``.
_BLANK_MIDDLE = ("",) * (DOMAIN - ADDRESS - 1)
_BLANK_TAIL = ("",) * (len(STAGED_COLUMNS) - DOMAIN_EXPIRES_ON - 1)
#: Holder fields whose import column has another name.
_HOLDER_COLUMNS = {"name": "holder_name", "kind": "holder_kind"}

StagedRow = tuple[str, ...]


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


@dataclass
class CheckedFile:
    """What the checks of a file found, as they go."""

    #: Good rows staged.
    rows: int = 0
    #: Records read after the header, blank ones included.
    records: int = 0
    errors: list[ImportProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Column name → position in the header, to sort a line's problems.
    position: dict[str, int] = field(default_factory=dict)

    def sort_errors(self) -> None:
        """The problems in file order: by line, then by column as the header orders them."""
        order = self.position
        self.errors.sort(key=lambda problem: (problem.line, order.get(problem.column or "", len(order))))


def check_header(cells: list[str], errors: list[ImportProblem]) -> list[str]:
    """The normalised column names; problems go to ``errors`` as line 1."""
    names = [cell.strip().lower() for cell in cells]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            errors.append(ImportProblem(1, f"#{position}", "the header cell is empty: name the column or remove it"))
        elif BAD_CHAR_RE.search(name):
            errors.append(ImportProblem(1, printable(name), bad_char_problem(name)))
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
    errors.extend(_expiry_header_problems(seen))
    return names


def _expiry_header_problems(seen: set[str]) -> list[ImportProblem]:
    if "expires_on" not in seen and "domain" not in seen and "domain_expires_on" not in seen:
        message = (
            "is missing from the header (or, for mailboxes on a customer domain, give domain and domain_expires_on)"
        )
        return [ImportProblem(1, "expires_on", message)]
    if "domain" in seen and "domain_expires_on" not in seen:
        return [ImportProblem(1, "domain_expires_on", "is missing from the header: a domain needs its expiry")]
    if "domain_expires_on" in seen and "domain" not in seen:
        return [ImportProblem(1, "domain", "is missing from the header: domain_expires_on needs it")]
    return []


class RowChecker:
    """Checks one record after another and stages each; keeps nothing per row.

    ``stage(row, good)`` receives every record that is not blank: a good row
    with all its values, a bad one with what the rules across rows need.
    """

    def __init__(
        self,
        header: list[str],
        stages: tuple[Stage, ...],
        checked_file: CheckedFile,
        stage: Callable[[StagedRow, bool], None],
    ):
        self.header = header
        self.width = len(header)
        checked_file.position = self.position = {name: index for index, name in enumerate(header)}
        # Every known column's stripped cell, in KNOWN_COLUMNS order; a column
        # missing from the header reads the empty cell appended to each record.
        self.known_cells = itemgetter(*(self.position.get(name, self.width) for name in KNOWN_COLUMNS))
        self.stages = stages
        self.checked = checked_file
        self.stage = stage
        self.bad_char_search = BAD_CHAR_RE.search
        self.next_action: dict[str, str] = {}

    def check(self, line: int, cells: list[str]) -> None:
        """Check the record on ``line`` (its CSV cells), stage it, and record its problems."""
        joined = "".join(cells)
        if not joined or joined.isspace():
            return  # a blank line
        problems: dict[str, str] = {}
        # ASCII without a bad character (printable ASCII never has one) has only
        # one character that strip removes, the space: the common case.
        if joined.isascii() and (joined.isprintable() or not self.bad_char_search(joined)):
            if len(cells) == self.width and stripped("\x00".join(cells)):
                # No cell to strip.
                cells.append("")
                self.stage(self._check_values(line, self.known_cells(cells), problems), not problems)
                if problems:
                    self._report(line, problems)
                return
        elif self.bad_char_search(joined):
            for name, cell in zip(self.header, cells, strict=False):
                if BAD_CHAR_RE.search(cell):
                    problems.setdefault(name, bad_char_problem(cell))
        if len(cells) != self.width:
            column = self.header[min(len(cells), self.width - 1)]
            problems.setdefault(
                column,
                f"the record has {len(cells)} fields but the header has {self.width}"
                " (quote values that contain a comma)",
            )
        else:
            # Cells with bad characters fail their own checks too; the first
            # problem of a cell is the one reported.
            cells = list(map(str.strip, cells))
            cells.append("")
            self.stage(self._check_values(line, self.known_cells(cells), problems), not problems)
        if problems:
            self._report(line, problems)

    def _report(self, line: int, problems: dict[str, str]) -> None:
        order = self.position
        errors = self.checked.errors
        for column in sorted(problems, key=lambda name: order.get(name, len(order))):
            errors.append(ImportProblem(line, column, problems[column]))

    def _check_values(self, line: int, values: tuple[str, ...], problems: dict[str, str]) -> StagedRow:
        """The row to stage: every value when the row is good, else what rules across rows need.

        Problems go to ``problems``, the first per column.  An empty string is an absent value.
        """
        problem = problems.setdefault
        # The known columns in KNOWN_COLUMNS order, a few to a line (fmt: skip keeps them so).
        (
            address, login, holder_name, holder_kind, reference_email, plan, expires_text, domain_text,
            domain_expires_text, auto_renew, payment_method, card_expiry, renewal_years, promo,
            extra_space, extra_archive, used_space, tax_code, vat_number, einvoice_code, language,
            postal_address, cig, cup, billing_address, billing_postcode, billing_city, billing_province,
            billing_country,
        ) = values  # fmt: skip
        if not address:
            problem("address", "is required")
        else:
            try:
                address = holder_data.normalise_email(address)
            except ValueError as error:
                problem("address", str(error))
                address = ""
        if not login:
            problem("account", "is required")
        elif (message := account_problem(login)) is not None:
            problem("account", message)
        holder, holder_key, holder_values, holder_problems = check_holder(
            holder_name, holder_kind, reference_email, tax_code, vat_number, einvoice_code, postal_address, cig, cup,
            billing_address, billing_postcode, billing_city, billing_province, billing_country,
        )  # fmt: skip
        for holder_problem in holder_problems:
            problem(_HOLDER_COLUMNS.get(holder_problem.field, holder_problem.field), holder_problem.message)
        if plan:
            plan = PLAN_NAMES.get(plan) or checked(plan, "plan", check_plan, problem) or ""
        else:
            problem("plan", "is required")
        expires_on, domain, domain_expires_on = _check_expiry(
            address, expires_text, domain_text, domain_expires_text, problem
        )
        renewal = ("0", "0", "", "1")
        if auto_renew or promo or payment_method or card_expiry or renewal_years:
            renewal = _check_renewal(
                domain_text, auto_renew, promo, payment_method, card_expiry, renewal_years, problem
            )
        extras = ("0", "0")
        if extra_space or extra_archive:
            extras = _check_extras(plan, extra_space, extra_archive, problem)
        used_space = str(checked(used_space, "used_space_mb", parse_uint, problem) or 0) if used_space else "0"
        if language:
            language = LANGUAGE_CODES.get(language) or checked(language, "language", check_language, problem) or ""
        else:
            language = DEFAULT_LANGUAGE

        if holder is not None and address and (domain or holder.reference_email == address):
            self._warn(line, address, holder.reference_email, domain)
        if problems:
            # What the rules across rows need: the address once it is valid,
            # the domain and its expiry once both are.
            if not (domain and domain_expires_on):
                domain = domain_expires_on = ""
            return (str(line), "", address, *_BLANK_MIDDLE, domain, domain_expires_on, *_BLANK_TAIL)
        self.checked.rows += 1
        auto_renew, promo, card_expires_on, renewal_years = renewal
        next_action_on = self.next_action.get(expires_on)
        if next_action_on is None:
            next_action_on = self._first_action_on(expires_on)
        # STAGED_COLUMNS in order, a few to a line (fmt: skip keeps them so).
        return (
            str(line), str(self.checked.rows), address, login, holder_key, domain, domain_expires_on, expires_on,
            plan, *extras, used_space, auto_renew, payment_method, card_expires_on, renewal_years, promo, language,
            next_action_on,
        ) + holder_values  # fmt: skip

    def _first_action_on(self, expires_on: str) -> str:
        """The cycle's first stage date, as staged, remembered by expiry: a file repeats its expiries."""
        first = first_action_on(self.stages, date.fromisoformat(expires_on))
        next_action_on = self.next_action[expires_on] = first.isoformat() if first else ""
        return next_action_on

    def _warn(self, line: int, address: str, reference_email: str, domain: str) -> None:
        if reference_email == address:
            self.checked.warnings.append(
                f"line {line}, column reference_email: is the mailbox itself; notices may never be read"
            )
            return
        if domain:
            reference_domain = reference_email.rpartition("@")[2]
            if reference_domain == domain or reference_domain.endswith("." + domain):
                self.checked.warnings.append(
                    f"line {line}, column reference_email: {reference_email} is on {domain}, the domain this"
                    " mailbox depends on; if the domain expires, notices may never be read"
                )


def _check_expiry(
    address: str, expires_text: str, domain_text: str, domain_expires_text: str, problem: Problem
) -> tuple[str, str, str]:
    """``(expires_on, domain, domain_expires_on)`` as staged.

    A mailbox on a customer domain takes its domain's expiry; ``expires_on`` must be empty.
    """
    if not (domain_text or domain_expires_text):
        if not expires_text:
            problem("expires_on", "is required (for a mailbox on a customer domain: domain and domain_expires_on)")
            return "", "", ""
        return checked(expires_text, "expires_on", check_date, problem) or "", "", ""
    domain_expires_on = ""
    if domain_expires_text:
        domain_expires_on = checked(domain_expires_text, "domain_expires_on", check_date, problem) or ""
    if expires_text:
        checked(expires_text, "expires_on", check_date, problem)
    if not domain_text:
        problem("domain_expires_on", "is only for a mailbox on a domain: give domain too, or use expires_on")
        return "", "", domain_expires_on
    domain = checked(domain_text, "domain", normalise_domain, problem) or ""
    if expires_text:
        problem(
            "expires_on", "must be empty for a mailbox on a domain: it takes the domain's expiry, domain_expires_on"
        )
    if not domain_expires_text:
        problem("domain_expires_on", "is required for a mailbox on a domain")
    if domain and address:
        address_domain = address.rpartition("@")[2]
        if address_domain != domain and not address_domain.endswith("." + domain):
            problem("domain", f"the address {address} is not on {domain}")
    return domain_expires_on, domain, domain_expires_on


def _check_renewal(
    domain_text: str,
    auto_renew_text: str,
    promo_text: str,
    payment_method: str,
    card_expiry: str,
    renewal_years_text: str,
    problem: Problem,
) -> tuple[str, str, str, str]:
    """How the mailbox renews, as staged: ``(auto_renew, promo, card_expires_on, renewal_years)``."""
    auto_renew = promo = "0"
    if auto_renew_text:
        auto_renew = BOOLEANS.get(auto_renew_text) or checked(auto_renew_text, "auto_renew", check_bool, problem) or "0"
    if promo_text:
        promo = BOOLEANS.get(promo_text) or checked(promo_text, "promo", check_bool, problem) or "0"
    if payment_method:
        checked(payment_method, "payment_method", check_payment_method, problem)
    if auto_renew == "1":
        if domain_text:
            problem("auto_renew", "must be false for a mailbox on a domain: it is renewed with its domain")
        elif not payment_method:
            problem("auto_renew", "is true but payment_method is empty")
    card_expires_on = ""
    if card_expiry:
        card_expires_on = checked(card_expiry, "card_expiry", check_card_expiry, problem) or ""
    renewal_years = "1"
    if renewal_years_text:
        years = checked(renewal_years_text, "renewal_years", parse_uint, problem)
        if years is not None:
            if not 1 <= years <= MAX_RENEWAL_YEARS:
                problem("renewal_years", f"{years} is not a number of years from 1 to {MAX_RENEWAL_YEARS}")
            elif promo == "1" and years > MAX_PROMO_RENEWAL_YEARS:
                problem(
                    "renewal_years", f"a promo mailbox renews for 1 or {MAX_PROMO_RENEWAL_YEARS} years, not {years}"
                )
            renewal_years = str(years)
    return auto_renew, promo, card_expires_on, renewal_years


def _check_extras(plan: str, extra_space_text: str, extra_archive_text: str, problem: Problem) -> tuple[str, str]:
    """``(extra_space_gb, extra_archive_gb)`` as staged, within the plan's limits."""
    extra_space_gb = extra_archive_gb = 0
    if extra_space_text:
        extra_space_gb = checked(extra_space_text, "extra_space_gb", parse_uint, problem) or 0
        if plan == STANDARD and extra_space_gb > MAX_STANDARD_EXTRA_SPACE_GB:
            problem(
                "extra_space_gb",
                f"{STANDARD} allows at most {MAX_STANDARD_EXTRA_SPACE_GB} GB of extra space, not {extra_space_gb}",
            )
    if extra_archive_text:
        extra_archive_gb = checked(extra_archive_text, "extra_archive_gb", parse_uint, problem) or 0
        if extra_archive_gb and plan and plan not in PLANS_WITH_ARCHIVE:
            problem(
                "extra_archive_gb",
                f"{plan} has no archive: extra archive space is only for {' and '.join(PLANS_WITH_ARCHIVE)}",
            )
    return str(extra_space_gb), str(extra_archive_gb)


@lru_cache(maxsize=4096)
def check_holder(
    name: str,
    kind: str,
    reference_email: str,
    tax_code: str,
    vat_number: str,
    einvoice_code: str,
    postal_address: str,
    cig: str,
    cup: str,
    billing_address: str = "",
    billing_postcode: str = "",
    billing_city: str = "",
    billing_province: str = "",
    billing_country: str = "",
) -> tuple[HolderData | None, str, tuple[str, ...], tuple[holder_data.HolderProblem, ...]]:
    """``holder_data.check_holder``, the holder key and the staged holder columns, cached.

    A holder's mailboxes are usually on nearby lines.  The staged columns are
    :data:`HOLDER_COLUMNS`, an empty string for an absent value.
    """
    holder, problems = holder_data.check_holder(
        name=name,
        kind=kind,
        reference_email=reference_email,
        tax_code=tax_code,
        vat_number=vat_number,
        einvoice_code=einvoice_code,
        postal_address=postal_address,
        cig=cig,
        cup=cup,
        billing_address=billing_address,
        billing_postcode=billing_postcode,
        billing_city=billing_city,
        billing_province=billing_province,
        billing_country=billing_country,
    )
    if holder is None:
        return None, "", (), tuple(problems)
    values = (
        holder.name,
        holder.kind,
        holder.reference_email,
        holder.tax_code or "",
        holder.vat_number or "",
        holder.postal_address or "",
        holder.sdi_code or "",
        holder.einvoice_pec or "",
        holder.office_code or "",
        holder.cig or "",
        holder.cup or "",
        holder.billing_address or "",
        holder.billing_postcode or "",
        holder.billing_city or "",
        holder.billing_province or "",
        holder.billing_country or "",
    )  # HOLDER_COLUMNS
    try:
        return holder, holder.holder_key, values, ()
    except UnicodeEncodeError:  # bytes that were not UTF-8: the row is refused for them
        return holder, "", values, ()
