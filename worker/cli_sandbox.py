"""``pec-renewal sandbox …``: look at the sandbox gateway's own record of charges."""

from __future__ import annotations

import json

import click


@click.group()
def sandbox() -> None:
    """The sandbox payment gateway (the default gateway; no money moves)."""


@sandbox.command("charges")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the first N charges.")
@click.pass_context
def charges(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """Every charge the sandbox gateway recorded, oldest first, as its dashboard would show them."""
    from worker.cli import _ensure_schema
    from worker.gateways import describe_payment_method
    from worker.gateways.sandbox import list_charges

    rt = ctx.find_root().obj
    _ensure_schema(rt)
    records = list_charges(rt.session_factory, limit=limit)
    if as_json:
        click.echo(json.dumps(records, indent=None))
        return
    if not records:
        click.echo("no sandbox charges recorded")
        return
    from rich.console import Console
    from rich.table import Table

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
            f"{describe_payment_method(record['payment_method'], 'en')} ({record['payment_method']})",
            f"{record['amount_cents'] / 100:.2f} {record['currency']}",
            record["outcome"],
            record["idempotency_key"],
            record["reference"],
        )
    Console(width=200).print(table)
