"""``pec-renewal events``: the platform's events, listed, sent now, or their failures queued again."""

from __future__ import annotations

import json
from datetime import date

import click

from worker.cli.common import ensure_schema, fail, runtime_of
from worker.events.delivery import event_counts, list_events, requeue_failed_events
from worker.store.models import EventStatus

STATUSES = tuple(status.value for status in EventStatus)


@click.group("events")
def events() -> None:
    """The events the PEC platform hears of (renewals, expiries, deletions, auto-renew), sent as webhooks."""


@events.command("list")
@click.option("--status", "status", metavar="STATUS", help=f"Only the events of this status: {', '.join(STATUSES)}.")
@click.option("--limit", default="100", show_default=True, metavar="N", help="At most N events, the latest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_command(ctx: click.Context, status: str | None, limit: str, as_json: bool) -> None:
    """List the latest events, with their status, attempts and last error."""
    if status is not None and status not in STATUSES:
        fail(f"--status: {status!r} is not one of {', '.join(STATUSES)}")
    if not limit.isdigit() or not 1 <= int(limit) <= 100_000:
        fail(f"--limit: {limit!r} is not a whole number from 1 to 100000")
    rt = runtime_of(ctx)
    ensure_schema(rt)
    with rt.session_factory() as session:
        rows = list_events(session, status=status, limit=int(limit))
        counts = event_counts(session)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True, ensure_ascii=False))
        return
    for row in rows:
        error = f"  {row['last_error']}" if row["last_error"] else ""
        click.echo(
            f"{row['id']:>8}  {row['occurred_at'][:19]}  {row['status']:<9} {row['attempts']:>3}  "
            f"{row['type']:<22} {row['data'].get('address', '')}  {row['webhook_id']}{error}"
        )
    where = "" if rt.settings.platform_webhook_url else "; PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: none is sent"
    click.echo(f"{counts.pending} pending, {counts.failed} failed{where}", err=True)


@events.command("retry")
@click.option("--since", metavar="YYYY-MM-DD", help="Only the events written on or after this business date.")
@click.pass_context
def retry(ctx: click.Context, since: str | None) -> None:
    """Queue again the failed events; each keeps its webhook-id, so the platform can drop a copy it had.

    They are sent within a minute, or at once with 'pec-renewal events deliver', each after
    the earlier pending events of its mailbox.
    """
    day = None
    if since is not None:
        try:
            day = date.fromisoformat(since)
        except ValueError:
            fail(f"--since: {since!r} is not a date like 2027-03-31")
    rt = runtime_of(ctx)
    ensure_schema(rt)
    with rt.session_factory() as session, session.begin():
        count = requeue_failed_events(session, day)
    where = f" written since {day}" if day else ""
    click.echo(f"requeued {count} failed event(s){where}; sent within a minute ('pec-renewal events deliver' now)")


@events.command("deliver")
@click.pass_context
def deliver(ctx: click.Context) -> None:
    """Post every event that is due now to the platform (retries whose backoff has passed included)."""
    rt = runtime_of(ctx)
    ensure_schema(rt)
    if not rt.event_sender.enabled:
        fail("PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: the events are kept, not sent", 1)
    result = rt.event_sender.deliver_due()
    click.echo(f"delivered {result.delivered}, deferred {result.deferred} (retried later), failed {result.failed}")
