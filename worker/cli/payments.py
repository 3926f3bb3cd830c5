"""``pec-renewal payments``: register bank transfers and postal slips, by hand or from a bank statement."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from worker.cli.common import ensure_schema, fail, runtime_of
from worker.gateways import make_gateway
from worker.rules import pricing, vocabulary
from worker.services.open_refunds import retry_open_refunds
from worker.services.payments import (
    BankStatementInvalid,
    PaymentRefused,
    import_bank_statement,
    parse_euro,
    register_payment,
)
from worker.services.payments.refunds import request_refund, settle_refund


def _amount(_ctx, _param, value: str) -> int:

    try:
        cents = parse_euro(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if cents <= 0:
        raise click.BadParameter(f"{value!r} is not a positive amount")
    return cents


def _optional_amount(ctx, param, value: str | None) -> int | None:
    return None if value is None else _amount(ctx, param, value)


@click.group("payments")
def payments() -> None:
    """Register payments of renewal orders (bank transfers, postal slips); refund card and PayPal payments."""


@payments.command("register")
@click.argument("order_number")
@click.option("--amount", required=True, callback=_amount, help="The amount paid in euro: 48.80 or 48,80.")
@click.option(
    "--reference",
    required=True,
    help="The payment's reference (CRO/TRN, slip number): registering it twice registers once.",
)
@click.option(
    "--method",
    type=click.Choice(vocabulary.PAYMENT_METHODS),
    default=vocabulary.BANK_TRANSFER,
    show_default=True,
    help="How it was paid.",
)
@click.pass_context
def register(ctx: click.Context, order_number: str, amount: int, reference: str, method: str) -> None:
    """Register one payment of ORDER_NUMBER (such as PEC-2027-000123); it completes the renewal."""

    rt = runtime_of(ctx)
    ensure_schema(rt)
    now = rt.clock()
    try:
        with rt.session_factory() as session, session.begin():
            result = register_payment(
                session,
                order_number=order_number,
                amount_cents=amount,
                method=method,
                reference=reference,
                now=now,
                today=rt.today(),
                settings=rt.settings,
            )
    except PaymentRefused as refused:
        fail(f"payment not registered: {refused}")
    if not result.registered:
        click.echo(f"{result.order_number}: this payment ({reference}) was already registered; nothing changed")
        return
    click.echo(
        f"{result.order_number}: payment of {pricing.format_amount(result.amount_cents)} EUR registered ({method})"
    )
    for item in result.renewed:
        click.echo(f"  {item.address}: renewed from {item.old_expires_on} to {item.new_expires_on} ({item.plan})")
    click.echo("the renewal-completed email is queued (sent by the next relay run)")


@payments.command("import-bank")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_bank(ctx: click.Context, csv_file: Path) -> None:
    """Register the bank transfers of a statement (CSV: date,amount,reference[,id]).

    Lines are matched to orders by the order number (PEC-YYYY-NNNNNN) in the
    reference.  Unmatched lines and wrong amounts are reported and change
    nothing; the exit status is then 1.
    """

    rt = runtime_of(ctx)
    ensure_schema(rt)
    try:
        with rt.session_factory() as session, session.begin():
            report = import_bank_statement(session, csv_file, now=rt.clock(), today=rt.today(), settings=rt.settings)
    except BankStatementInvalid as error:
        fail(f"{csv_file}: {error}")
    except (UnicodeDecodeError, OSError) as error:
        fail(f"{csv_file}: cannot be read: {error}")
    for line in report.lines:
        stream_err = line.status not in ("registered", "already_registered", "skipped")
        click.echo(f"line {line.line}: {line.status}: {line.message}", err=stream_err)
    counts = report.counts
    click.echo(
        f"{csv_file}: {len(report.lines)} line(s): {counts['registered']} registered, "
        f"{counts['already_registered']} already registered, {counts['unmatched']} unmatched, "
        f"{counts['wrong_amount']} wrong amount, {counts['refused']} refused, {counts['invalid']} invalid, "
        f"{counts['skipped']} skipped"
    )
    if report.problems:
        sys.exit(1)


def _refund_line(done) -> str:
    return (
        f"{done.order_number or '-'}: refund {done.refund_id} of {pricing.format_amount(done.amount_cents)} EUR: "
        f"{done.status} ({done.message})"
    )


@payments.command("refund")
@click.argument("order_number")
@click.option("--amount", callback=_optional_amount, help="The amount to refund in euro (default: all that is left).")
@click.option("--reason", default="", help="Why (kept with the refund; PayPal shows it to the payer).")
@click.pass_context
def refund(ctx: click.Context, order_number: str, amount: int | None, reason: str) -> None:
    """Refund ORDER_NUMBER's card or PayPal payment through the gateway that took it, and email the holder."""

    rt = runtime_of(ctx)
    ensure_schema(rt)
    try:
        with rt.session_factory() as session, session.begin():
            started = request_refund(
                session, order_number=order_number, amount_cents=amount, reason=reason, now=rt.clock()
            )
            refund_id, gateway = started.id, started.gateway
        with rt.session_factory() as session:
            gateway_adapter = make_gateway(rt.settings, rt.session_factory, clock=rt.clock, name=gateway)
            try:
                done = settle_refund(
                    session, gateway_adapter, refund_id, now=rt.clock(), today=rt.today(), settings=rt.settings
                )
            finally:
                gateway_adapter.close()
    except PaymentRefused as refused:
        fail(f"nothing refunded: {refused}")
    click.echo(_refund_line(done), err=done.status in ("failed", "unknown"))
    if done.status in ("failed", "unknown"):
        sys.exit(1)


@payments.command("refunds-retry")
@click.pass_context
def refunds_retry(ctx: click.Context) -> None:
    """Ask the gateways again for every refund left without an answer (same idempotency key: never twice)."""

    rt = runtime_of(ctx)
    ensure_schema(rt)
    done = retry_open_refunds(rt.session_factory, settings=rt.settings, clock=rt.clock, today=rt.today())
    for item in done:
        click.echo(_refund_line(item))
    click.echo(f"{len(done)} open refund(s) asked again")
