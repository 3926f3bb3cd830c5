"""The ``pec-renewal`` command."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from config.settings import Settings, SettingsError
from worker.celery_setup import create_celery
from worker.cli.common import database_lost, ensure_schema, fail, parse_date, runtime_of, stderr_console
from worker.cli.desk import desk_commands
from worker.cli.events import events
from worker.cli.payments import payments
from worker.cli.sandbox import sandbox
from worker.cli.serve import serve
from worker.logs import configure_logging, log_context, remove_logging
from worker.mail.outbox import requeue_failed_messages
from worker.services import runtime as runtime_module
from worker.services.daily import count_due, run_day
from worker.services.demo import run_demo
from worker.services.health import check_all
from worker.services.importer import ImportRefused, count_records, import_mailboxes
from worker.services.report import build_report, print_report
from worker.services.runtime import Runtime
from worker.store import migrate

log = logging.getLogger("pec_renewal")


class _Commands(click.Group):
    """Turns a database that cannot be reached, or goes away at any point of a command (mid-delivery
    included), into one clear line and exit 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as error:
            reason = database_lost(error)
            if reason is None:
                raise
            fail(
                f"cannot use the database: {reason[:300]} (is it running? 'pec-renewal check' probes every service;"
                " once it is back, run the command again: nothing done is lost)",
                1,
            )


@click.group(cls=_Commands)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Expiry notices, auto-renewal and renewal links for a PEC provider."""

    # The one place the CLI configures logging: text until the settings are
    # read (a bad one is reported in one line), then PEC_RENEWAL_LOG_FORMAT.
    # A host that configured logging already (pytest, a program calling main) keeps its own.
    level = logging.DEBUG if verbose else logging.WARNING
    handler = configure_logging("text", level, unless_configured=True)
    ctx.call_on_close(lambda: remove_logging(handler))  # the handler in use when the command ends
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        fail(str(error))
    if handler is not None:
        handler = configure_logging(settings.log_format, level)
    ctx.obj = Runtime(settings)
    runtime_module.install(ctx.obj)
    runtime_module.freeze_startup_objects()
    ctx.call_on_close(lambda: runtime_module.install(None))


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the migrations up to the newest."""

    rt = runtime_of(ctx)
    migrate.upgrade(rt.settings.database_url)
    click.echo(f"database at revision {migrate.current_revision(rt.settings.database_url)}")


@main.group("import")
def import_group() -> None:
    """Load data from files."""


@import_group.command("mailboxes")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the file and show what it would do (new, updated, unchanged, conflicts); change nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Apply the file's expiries, plans, extras and auto-renew settings even where they would move an expiry"
    " earlier or undo a renewal made here.",
)
@click.pass_context
def import_mailboxes_command(ctx: click.Context, csv_file: Path, dry_run: bool, force: bool) -> None:
    """Import (upsert by address) the mailboxes of CSV_FILE; any bad row refuses the whole file.

    A row older than the worker's data (an earlier expiry than the mailbox's,
    or other renewal values for a cycle renewed here) does not undo it: the
    worker's values are kept and listed as conflicts.
    """

    rt = runtime_of(ctx)
    ensure_schema(rt)
    total = count_records(csv_file)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        disable=total < 5000,
    ) as bar:
        task = bar.add_task("checking" if dry_run else "importing", total=total * 2)
        try:
            report = import_mailboxes(
                rt.session_factory,
                csv_file,
                stages=rt.settings.notice_stages,
                progress=lambda done: bar.update(task, completed=done),
                force=force,
                dry_run=dry_run,
                now=rt.clock(),
                today=rt.today(),
            )
        except ImportRefused as refused:
            bar.stop()
            for error in refused.errors:
                click.echo(str(error), err=True)
            fail(f"{csv_file}: {len(refused.errors)} problem(s); nothing was imported")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for conflict in report.conflicts:
        click.echo(f"conflict: {conflict}")
    for closed in report.closed:
        click.echo(f"closed: {closed}")
    counts = (
        f"{report.created} new, {report.updated} updated, {report.unchanged} unchanged,"
        f" {report.conflicting} conflict(s) ({len(report.warnings)} warning(s))"
    )
    if dry_run:
        click.echo(f"dry run: {report.rows} mailboxes in {csv_file}: {counts}; nothing was changed")
    else:
        click.echo(f"imported {report.rows} mailboxes from {csv_file}: {counts}")


@main.command("run-daily")
@click.option(
    "--date",
    "business_date",
    callback=parse_date,
    help="Business date (YYYY-MM-DD); default: today in the business time zone.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def run_daily(ctx: click.Context, business_date: date | None, dry_run: bool, as_json: bool) -> None:
    """Run the whole daily job to completion: scan, ledger, rendering and delivery."""

    rt = runtime_of(ctx)
    ensure_schema(rt)
    day = business_date or rt.today()
    due = count_due(rt, day)
    with (
        log_context(day=day),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=stderr_console(),
            disable=due < 5000,
        ) as bar,
    ):
        scanning = bar.add_task(f"scanning {day}", total=due)
        delivering = bar.add_task("delivering", total=None, visible=False)

        def delivered(count: int) -> None:
            bar.update(delivering, advance=count, visible=True)

        summary = run_day(
            rt, day, dry_run=dry_run, progress=lambda n: bar.advance(scanning, n), delivery_progress=delivered
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), sort_keys=True))
        return
    _print_summary(summary)


def _print_summary(summary) -> None:
    scan, delivery = summary.scan, summary.delivery
    title = "Dry run" if summary.dry_run else "Daily run"
    click.echo(f"{title} for {summary.business_date}")
    click.echo(f"  examined: {scan.examined} mailboxes")
    notices = sum(scan.notices.values())
    emails = sum(scan.emails.values())
    verb = "would send" if summary.dry_run else "queued"
    click.echo(f"  {verb}: {emails} emails for {notices} mailboxes")
    for (kind, stage), count in sorted(scan.emails.items()):
        click.echo(f"    {kind:<22} {stage:>5}  {count} emails, {scan.notices[(kind, stage)]} mailboxes")
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(scan.skipped.items())) or "none"
    click.echo(f"  skipped: {skipped}")
    if scan.superseded:
        click.echo(f"  superseded: {scan.superseded} earlier stages passed over (missed days)")
    charges = summary.charges
    if charges.examined:
        outcomes = ", ".join(f"{outcome} {count}" for outcome, count in sorted(charges.outcomes.items())) or "none"
        click.echo(
            f"  charges: examined {charges.examined} auto-renew mailboxes; {outcomes};"
            f" gateway calls {charges.charges}, lookups {charges.lookups}, errors {charges.errors}"
        )
        for (kind, stage), count in sorted(charges.emails.items()):
            click.echo(f"    queued {kind:<22} {stage:>5}  {count} emails")
    if summary.dry_run:
        for planned in scan.planned:
            click.echo(f"    -> {planned.to_address}  {planned.kind} {planned.stage}  {', '.join(planned.mailboxes)}")
        return
    click.echo(
        f"  delivery: sent {delivery.sent}, deferred {delivery.deferred} (retried later),"
        f" bounced {delivery.bounced}, failed {delivery.failed}"
    )
    for (kind, stage), count in sorted(delivery.sent_by_kind.items()):
        click.echo(f"    sent {kind:<22} {stage:>5}  {count} emails")
    refused = sum(delivery.refused.values())
    if refused:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(delivery.refused.items()))
        click.echo(
            f"  warning: {refused} mailbox notice(s) refused by the renderer ({reasons}):"
            " 'pec-renewal report' and 'pec-renewal mailbox show ADDRESS' say which"
        )


@main.command("relay")
@click.pass_context
def relay(ctx: click.Context) -> None:
    """Deliver every outbox message that is due now (retries included)."""
    rt = runtime_of(ctx)
    ensure_schema(rt)
    result = rt.relay.deliver_due()
    click.echo(f"sent {result.sent}, deferred {result.deferred}, bounced {result.bounced}, failed {result.failed}")


@main.group()
def outbox() -> None:
    """The queue of emails to send."""


@outbox.command("retry")
@click.option(
    "--date", "business_date", callback=parse_date, help="Only the messages of this business date (YYYY-MM-DD)."
)
@click.pass_context
def outbox_retry(ctx: click.Context, business_date: date | None) -> None:
    """Queue again the messages that failed (attempts ran out); bounced ones stay bounced.

    Each keeps its Message-ID, so a receiver can drop a copy it already had.
    The relay sends them within a minute, or at once with 'pec-renewal relay'.
    """
    rt = runtime_of(ctx)
    ensure_schema(rt)
    with rt.session_factory() as session, session.begin():
        count = requeue_failed_messages(session, business_date)
    where = f" of {business_date}" if business_date else ""
    click.echo(
        f"requeued {count} failed message(s){where}; the relay sends them within a minute ('pec-renewal relay' now)"
    )
    click.echo(
        "messages refused by the renderer stay failed: correct the data (re-import),"
        " then 'pec-renewal notices resend ADDRESS'"
    )


@main.command("report")
@click.option(
    "--date", "start", callback=parse_date, help="First day (YYYY-MM-DD); default: today in the business time zone."
)
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 92), help="How many days ahead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def report(ctx: click.Context, start: date | None, days: int, as_json: bool) -> None:
    """What is due in the coming days, by kind, and the failures and bounces of the last run."""

    rt = runtime_of(ctx)
    ensure_schema(rt)
    with rt.session_factory() as session:
        result = build_report(
            session, start=start or rt.today(), days=days, stages=rt.settings.notice_stages, plan=rt.charge_plan
        )
    if as_json:
        click.echo(json.dumps(result.as_dict(), sort_keys=True))
        return
    print_report(result, Console())


@main.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Probe the database, broker, mail and payment gateway; exit 1 if any is down."""

    probes = check_all(runtime_of(ctx))
    for probe in probes:
        click.echo(f"{probe.service:<9} {'ok' if probe.ok else 'DOWN':<5} {probe.detail}")
    if not all(probe.ok for probe in probes):
        sys.exit(1)


@main.command("run")
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
@click.pass_context
def run(ctx: click.Context, concurrency: int) -> None:
    """Start a Celery worker with beat (the embedded default needs no server)."""
    rt = runtime_of(ctx)
    ensure_schema(rt)

    app = create_celery(rt.settings)
    if rt.settings.broker_url.startswith("filesystem"):
        for folder in ("data_folder_in", "processed_folder"):
            Path(rt.settings.broker_transport_options[folder]).mkdir(parents=True, exist_ok=True)
    app.worker_main(["worker", "--beat", "--loglevel=INFO", f"--concurrency={concurrency}"])


@main.command("demo")
@click.option("--mailboxes", "count", default=300, show_default=True, help="How many sample mailboxes.")
@click.pass_context
def demo(ctx: click.Context, count: int) -> None:
    """Build a sample database in ./var, import varied mailboxes, run today's job, show what was sent."""

    run_demo(runtime_of(ctx), count, echo=click.echo)


main.add_command(sandbox)
main.add_command(serve)
main.add_command(payments)
main.add_command(events)
for desk_group in desk_commands():
    main.add_command(desk_group)


if __name__ == "__main__":
    main()
