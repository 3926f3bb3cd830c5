"""``pec-renewal invoices export``: the electronic invoices as FatturaPA files for an SDI intermediary."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from worker.cli.common import ensure_schema, fail, parse_date, runtime_of, stderr_console
from worker.services.invoices.export import SellerMissing, export_invoices


@click.group("invoices")
def invoices() -> None:
    """Electronic invoices (FatturaPA) of paid renewals and credit notes of refunds."""


@invoices.command("export")
@click.option("--since", required=True, callback=parse_date, help="Invoices issued on or after this date (YYYY-MM-DD).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder the files are written to (made if missing).",
)
@click.option("--all", "include_exported", is_flag=True, help="Write the invoices exported before too.")
@click.pass_context
def export(ctx: click.Context, since: date, out_dir: Path, include_exported: bool) -> None:
    """Write each invoice not yet exported as IT{VAT}_{progressive}.xml and mark it exported.

    Waiting invoices whose data have come are issued first; those still waiting are listed.
    """
    rt = runtime_of(ctx)
    ensure_schema(rt)
    console = stderr_console()
    try:
        with console.status("exporting invoices") as status:
            written = 0

            def advanced(count: int) -> None:
                nonlocal written
                written += count
                status.update(f"exporting invoices: {written} written")

            result = export_invoices(
                rt.engine,
                rt.settings.seller,
                since=since,
                out_dir=out_dir,
                today=rt.today(),
                now=rt.clock(),
                include_exported=include_exported,
                progress=advanced,
            )
    except SellerMissing as missing:
        fail(f"invoices not exported: {missing}")
    except OSError as error:
        fail(f"invoices not exported: {out_dir}: {error.strerror or error}", 1)
    for waiting in result.waiting:
        click.echo(f"waiting: {waiting.reference} (paid {waiting.paid_on}): missing {', '.join(waiting.reasons)}")
    click.echo(
        f"{len(result.written)} invoice(s) written to {out_dir}"
        + (f", {result.issued_now} issued now" if result.issued_now else "")
        + (f", {len(result.waiting)} waiting" if result.waiting else "")
    )
