"""The operator's desk on the command line: ``mailbox show``, ``notices resend``, ``orders list|cancel``,
``links issue`` (the work is in :mod:`worker.services.desk`).

Bad input (an unknown address or order, a request the data does not allow)
is one line and exit status 2; nothing is written then.  The text output fits
80 columns.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from worker.cli.common import ensure_schema, fail
from worker.services import desk
from worker.services.runtime import Runtime

WIDTH = 80


def _wrapped(text: str, indent: str = "  ", hanging: str = "    ") -> str:
    return textwrap.fill(
        text,
        width=WIDTH,
        initial_indent=indent,
        subsequent_indent=hanging,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _field(label: str, value: Any) -> str:
    return _wrapped(f"{label:<16}{value}", hanging=" " * 18)


def _detail(text: str) -> str:
    """A line under an item of a section, indented one step further."""
    return _wrapped(text, indent="    ", hanging="      ")


def _section(lines: list[str], title: str, items: list[Any]) -> None:
    """A section's heading with its count, and "none" when it has no items."""
    lines.append(f"{title} ({len(items)})")
    if not items:
        lines.append("  none")


def format_mailbox(details: dict[str, Any]) -> str:
    """``mailbox show`` as text, 80 columns wide."""
    holder = details["holder"]
    lines = [f"Mailbox {details['address']}"]
    holder_text = f"{holder['name']} ({holder['kind']})"
    if holder["tax_code"] or holder["vat_number"]:
        holder_text += f", {holder['tax_code'] or holder['vat_number']}"
    lines.append(_field("holder", holder_text))
    lines.append(_field("account", details["account"]))
    lines.append(_field("reference", details["reference_email"]))
    extras = details["extras"]
    extra_text = ", ".join(
        f"{name} +{extras[key]} GB" for key, name in (("space_gb", "space"), ("archive_gb", "archive")) if extras[key]
    )
    lines.append(_field("plan", f"{details['plan']}" + (f", {extra_text}" if extra_text else ", no extras")))
    if details["domain"]:
        lines.append(_field("domain", f"{details['domain']['name']}, renewed with the domain"))
    lines.append(_field("expires on", f"{details['expires_on']} ({details['state']})"))
    lines.append(_field("last renewable", details["last_renewable_on"]))
    lines.append(_field("deletion on", details["deletion_on"]))
    if details["auto_renew"]:
        method = details["payment_method"]
        text = "on, " + (f"{method['description']} ({method['masked']})" if method else "no payment method")
        if details["card_expires_on"]:
            text += f", card expires {details['card_expires_on']}"
    else:
        text = "off"
    lines.append(_field("auto-renew", text))
    if details["next_action_on"]:
        lines.append(_field("next action", f"{details['next_action_on']}: {details['next_action']}"))
    else:
        lines.append(_field("next action", "none"))

    notices = details["notices"]
    _section(lines, "Notices", notices)
    for notice in notices:
        lines.append(
            _wrapped(
                f"{notice['business_date']}  {notice['kind']} {notice['stage']} (cycle {notice['cycle_expires_on']})"
            )
        )
        status = notice["status"]
        if notice["sent_at"]:
            status += f" {notice['sent_at'][:16].replace('T', ' ')} UTC"
        if notice["to_address"]:
            status += f" to {notice['to_address']}"
        lines.append(_detail(status))
        if notice["message_id"]:
            lines.append(_detail(f"Message-ID <{notice['message_id']}>"))
        if notice["refused_reason"]:
            lines.append(_detail(f"refused: {notice['refused_reason']}"))
        elif notice["last_error"] and notice["status"] != "sent":
            lines.append(_detail(f"last error: {notice['last_error']}"))
        for earlier in notice["earlier_deliveries"]:
            lines.append(
                _detail(
                    f"replaces: to {earlier['to_address']}, {earlier['status']}, Message-ID <{earlier['message_id']}>"
                )
            )

    orders = details["orders"]
    _section(lines, "Orders", orders)
    for order in orders:
        lines.append(_wrapped(_order_line(order)))
        for payment in order["payments"]:
            lines.append(
                _detail(
                    f"paid {payment['amount']} by {payment['method']} on {payment['business_date']},"
                    f" ref {payment['reference']}"
                )
            )

    intents = details["charges"]
    _section(lines, "Charges", intents)
    for intent in intents:
        lines.append(
            _wrapped(
                f"{intent['business_date']}  attempt {intent['attempt']} (cycle {intent['cycle_expires_on']}):"
                f" {intent['status']}, {intent['amount']} with {intent['payment_method']}"
                + (f", declined: {intent['decline_code']}" if intent["decline_code"] else "")
            )
        )
    opt_outs = details["opt_outs"]
    _section(lines, "Opt-outs", opt_outs)
    for item in opt_outs:
        state = "in force" if item["in_force"] else f"ended: {item['ended']}"
        lines.append(
            _wrapped(
                f"{item['what']} for the expiry of {item['cycle_expires_on']}, on {item['opted_out_at']}"
                f" ({item['via']}): {state}"
            )
        )
    return "\n".join(lines)


def _order_line(order: dict[str, Any]) -> str:
    number = order["order_number"] or "(draft, no number yet)"
    parts = [f"{number}  {order['status']}", f"cycle {order['cycle_expires_on']}"]
    if order["total"]:
        parts.append(order["total"])
    if order["payment_method"]:
        parts.append(order["payment_method"])
    if order["origin"] != "link":
        parts.append(order["origin"])
    parts.append(f"created {order['created_at'][:10]}")
    return ", ".join(parts)


def desk_commands() -> list[click.Group]:
    """The ``mailbox``, ``notices``, ``orders`` and ``links`` groups."""

    def runtime(ctx: click.Context) -> Runtime:
        rt = ctx.find_root().obj
        ensure_schema(rt)
        return rt

    @click.group("mailbox")
    def mailbox() -> None:
        """Look at one mailbox."""

    @mailbox.command("show")
    @click.argument("address")
    @click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
    @click.pass_context
    def mailbox_show(ctx: click.Context, address: str, as_json: bool) -> None:
        """Everything about the mailbox ADDRESS: holder, dates, auto-renew, next action, notices, orders, charges."""
        rt = runtime(ctx)
        with rt.session_factory() as session:
            try:
                found = desk.find_mailbox(session, address)
            except desk.DeskRefused as refused:
                fail(str(refused))
            details = desk.mailbox_details(
                session, found, today=rt.today(), stages=rt.settings.notice_stages, plan=rt.charge_plan
            )
        if as_json:
            click.echo(json.dumps(details, sort_keys=True))
            return
        click.echo(format_mailbox(details))

    @click.group("notices")
    def notices() -> None:
        """The notices sent to holders."""

    @notices.command("resend")
    @click.argument("address")
    @click.pass_context
    def notices_resend(ctx: click.Context, address: str) -> None:
        """Send the current cycle's latest notice of ADDRESS again, to its current reference address.

        A new message with a new Message-ID, queued in the outbox: the relay
        delivers it within a minute ('pec-renewal relay' or run-daily at once).
        Use it after correcting a reference address.
        """
        rt = runtime(ctx)
        try:
            with rt.session_factory() as session, session.begin():
                resent = desk.resend_latest_notice(
                    session, address, today=rt.today(), now=rt.clock(), mail_domain=rt.mail_domain
                )
        except desk.DeskRefused as refused:
            fail(str(refused))
        click.echo(f"queued again: {resent.kind} {resent.stage} of {resent.address} (cycle {resent.cycle_expires_on})")
        click.echo(_wrapped(f"to {resent.to_address}, Message-ID <{resent.message_id}>"))
        if resent.previous_to_address is not None:
            click.echo(
                _wrapped(
                    f"it replaces the message to {resent.previous_to_address} ({resent.previous_status})", indent="  "
                )
            )
        click.echo(
            _wrapped(
                "the relay delivers it within a minute under Celery; without workers run 'pec-renewal relay'"
                " (or the next run-daily delivers it)",
                indent="",
                hanging="  ",
            )
        )

    @click.group("orders")
    def orders() -> None:
        """Renewal orders."""

    def status_option(_ctx, _param, value: str | None) -> str | None:
        try:
            return desk.check_order_status(value)
        except desk.DeskRefused as refused:
            fail(str(refused))

    @orders.command("list")
    @click.option(
        "--status", callback=status_option, help=f"Only orders with this status: {', '.join(desk.ORDER_STATUSES)}."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
    @click.pass_context
    def orders_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
        """Every renewal order, oldest first, or those with one status."""
        rt = runtime(ctx)
        with rt.session_factory() as session:
            found = desk.list_orders(session, status)
        if as_json:
            click.echo(json.dumps(found, sort_keys=True))
            return
        if not found:
            click.echo("no orders" + (f" with status {status}" if status else ""))
            return
        for order in found:
            click.echo(_wrapped(_order_line(order), indent="", hanging="  "))
            holder = f"{order['holder']}: " if order["holder"] else ""
            click.echo(
                _wrapped(holder + (", ".join(order["mailboxes"]) or "no mailbox selected"), indent="  ", hanging="    ")
            )
        click.echo(f"{len(found)} order(s)")

    @orders.command("cancel")
    @click.argument("order_number")
    @click.pass_context
    def orders_cancel(ctx: click.Context, order_number: str) -> None:
        """Cancel the unpaid order ORDER_NUMBER (such as PEC-2027-000123); a paid order cannot be cancelled."""
        rt = runtime(ctx)
        try:
            with rt.session_factory() as session, session.begin():
                result = desk.cancel_order(session, order_number, settings=rt.settings)
        except desk.DeskRefused as refused:
            fail(str(refused))
        if result.already:
            click.echo(f"{result.order_number} was already cancelled; nothing changed")
            return
        click.echo(f"{result.order_number} cancelled (it was {result.previous_status}); a payment of it is now refused")
        click.echo(
            _wrapped(
                f"note: the Rinnova link of the cycle expiring {result.cycle_expires_on} can start a new order;"
                " the confirmation of this one is withdrawn if it was not sent yet",
                indent="",
                hanging="  ",
            )
        )

    @click.group("links")
    def links() -> None:
        """Signed renewal links."""

    @links.command("issue")
    @click.argument("address")
    @click.pass_context
    def links_issue(ctx: click.Context, address: str) -> None:
        """Print a fresh Rinnova link of ADDRESS for its current expiry cycle (for the support desk)."""
        rt = runtime(ctx)
        with rt.session_factory() as session:
            try:
                issued = desk.issue_link(session, rt.signer, address, today=rt.today())
            except desk.DeskRefused as refused:
                fail(str(refused))
        click.echo(issued.url)
        click.echo(
            f"{issued.address}, expiry cycle {issued.cycle_expires_on}; the link works for"
            f" {rt.settings.link_max_age_days} days and until the mailbox is renewed",
            err=True,
        )

    return [mailbox, notices, orders, links]
