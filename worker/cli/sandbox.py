"""``pec-renewal sandbox …``: look at the sandbox gateway's own record of charges and 3-D Secure challenges."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.cli.common import ensure_schema
from worker.gateways import describe_payment_method
from worker.gateways.sandbox import list_charges
from worker.gateways.sandbox_challenge import list_challenges
from worker.services.desk import failed_without_charge_attempt
from worker.store.models import ChargeIntent


@click.group()
def sandbox() -> None:
    """The sandbox payment gateway (the default gateway; no money moves)."""


@sandbox.command("charges")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the first N charges.")
@click.pass_context
def charges(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """Every charge the sandbox gateway recorded, oldest first, as its dashboard would show them."""

    rt = ctx.find_root().obj
    ensure_schema(rt)
    records = list_charges(rt.session_factory, limit=limit)
    if as_json:
        click.echo(json.dumps(records, indent=None))
        return
    if not records:
        with rt.session_factory() as session:
            click.echo(empty_record_explained(session, rt.settings.payment_gateway))
        return

    table = Table(title=f"Sandbox charges ({len(records)})")
    for column, justify in (
        ("at (UTC)", "left"),
        ("payment method", "left"),
        ("amount", "right"),
        ("outcome", "left"),
        ("idempotency key", "left"),
        ("reference", "left"),
    ):
        table.add_column(column, justify=justify)
    for record in records:
        table.add_row(
            record["at"][:19].replace("T", " "),
            f"{record['stored_method'] or describe_payment_method(record['payment_method'], 'en')}"
            f" ({record['payment_method']})",
            f"{record['amount_cents'] / 100:.2f} {record['currency']}",
            record["outcome"],
            record["idempotency_key"],
            record["reference"],
        )
    Console(width=200).print(table)


def empty_record_explained(session: Session, gateway: str) -> str:
    """Why the sandbox recorded nothing: which gateway charges, and what became of the auto-renewals."""
    intents = session.scalar(select(func.count()).select_from(ChargeIntent)) or 0
    not_charged = failed_without_charge_attempt(session)
    if gateway != "sandbox":
        line = f"no sandbox charges recorded: the payment gateway is {gateway} (PEC_RENEWAL_PAYMENT_GATEWAY)"
        return line + f"; its {intents} charge attempt(s) are in its own dashboard" if intents else line
    if intents:
        return (
            f"no sandbox charges recorded, although this database holds {intents} charge intent(s):"
            " they were made with another gateway (PEC_RENEWAL_PAYMENT_GATEWAY)"
            " or before the sandbox's record was emptied"
        )
    line = "no sandbox charges recorded: no auto-renew charge has been attempted in this database"
    if not_charged:
        line += (
            f"; {not_charged} charge-failed email(s) went out without a charge attempt (the cycle reached the"
            " worker after its charge days, or no payment method was stored): 'pec-renewal mailbox show ADDRESS'"
            " shows each one"
        )
    return line


@sandbox.command("challenges")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.pass_context
def challenges(ctx: click.Context, as_json: bool) -> None:
    """Every 3-D Secure challenge the sandbox gateway opened, oldest first, with the holder's answer."""
    rt = ctx.find_root().obj
    ensure_schema(rt)
    with rt.session_factory() as session:
        records = list_challenges(session.get_bind())
    if as_json:
        click.echo(json.dumps(records, indent=None))
        return
    if not records:
        click.echo("no sandbox 3-D Secure challenges recorded")
        return
    table = Table(title=f"Sandbox 3-D Secure challenges ({len(records)})")
    for column in ("opened (UTC)", "charge reference", "answer", "answered (UTC)"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record["created_at"][:19].replace("T", " "),
            record["charge_reference"],
            record["status"],
            (record["decided_at"] or "")[:19].replace("T", " "),
        )
    Console(width=200).print(table)
