"""Opting out of the expiry reminders: the ``List-Unsubscribe`` page and the renewal page's "Non intendo rinnovare".

``/avvisi/<token>`` is the URL of every reminder's ``List-Unsubscribe`` header:

- ``POST`` with the body ``List-Unsubscribe=One-Click`` (RFC 8058) is what a mail
  client sends when the holder unsubscribes: no cookie, no CSRF token (the signed
  token in the URL is the authority), answered 200.  It opts that email's mailboxes
  out of their current cycle's reminders; a second one changes nothing.  It is the one
  form POST of the link handler exempt from the CSRF check (:func:`is_one_click`).
- ``GET`` shows the same choice as a button, says what it means (the mailbox expires
  on its date and is deleted 90 days later) and, after an opt-out, offers to resume.  It
  writes nothing.  Its buttons are CSRF-checked forms (POST, redirect, GET).

``POST /rinnova/<token>/avvisi`` is the same choice from the renewal page, for the
mailboxes the link's page lists that could be renewed.

The rules are :mod:`worker.services.reminders`; this module reads the request, calls
it in one session, commits, and shows the page.
"""

from __future__ import annotations

from contextlib import contextmanager

from flask import Blueprint, Request, abort, current_app, redirect, render_template, request, url_for
from flask_wtf.csrf import generate_csrf

from worker.rules.links import TokenInvalid
from worker.services import orders, reminders
from worker.web import forms, i18n
from worker.web.errors import csrf_error, invalid_link_page
from worker.web.runtime import runtime_of

blueprint = Blueprint("reminders", __name__)

#: RFC 8058: the one-click POST carries exactly this key and value.
ONE_CLICK_KEY = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
#: The endpoint that takes the one-click POST, exempt from the CSRF and Origin checks.
ONE_CLICK_ENDPOINT = "reminders.reminders_page"


def is_one_click(req: Request) -> bool:
    """Whether ``req`` is RFC 8058's one-click unsubscribe POST to a reminders link."""
    return (
        req.method == "POST" and req.endpoint == ONE_CLICK_ENDPOINT and req.form.get(ONE_CLICK_KEY) == ONE_CLICK_VALUE
    )


@contextmanager
def _db():
    with runtime_of(current_app).session_factory() as db_session:
        try:
            yield db_session
        except BaseException:
            db_session.rollback()
            raise


@blueprint.route("/avvisi/<token>", methods=["GET", "POST"])
def reminders_page(token: str):
    """GET: the reminders' page (writes nothing).  POST: one-click (RFC 8058), or the page's buttons."""
    runtime = runtime_of(current_app)
    try:
        message_id = runtime.signer.read_reminders_token(token)
    except TokenInvalid:
        return invalid_link_page()
    if request.method == "GET":
        with _db() as db_session:
            view = reminders.describe_reminders(db_session, message_id, runtime.today())
            db_session.rollback()  # read-only, whatever the service did
        if view is None:
            return invalid_link_page()
        return _page(view, token)
    if is_one_click(request):
        with _db() as db_session:
            view = reminders.opt_out(
                db_session, message_id, today=runtime.today(), now=runtime.clock(), via=reminders.ONE_CLICK
            )
            if view is None:
                db_session.rollback()
                return invalid_link_page()
            db_session.commit()
        # No form on this answer: it sets no cookie, as the one-click request carried none.
        return _page(view, token, one_click=True)
    form = forms.RemindersForm()
    if not form.validate_on_submit():
        return _refused(form)
    with _db() as db_session:
        today = runtime.today()
        if form.action.data == "opt-out":
            view = reminders.opt_out(
                db_session, message_id, today=today, now=runtime.clock(), via=reminders.REMINDERS_PAGE
            )
        else:
            view = reminders.opt_back_in(db_session, message_id, today=today)
        if view is None:
            db_session.rollback()
            return invalid_link_page()
        db_session.commit()
    return redirect(url_for("reminders.reminders_page", token=token), 303)


def _refused(form: forms.RemindersForm):
    """An expired or missing CSRF token: the expired-form page; any other bad input: 400."""
    csrf_field = getattr(form, "csrf_token", None)
    if csrf_field is not None and csrf_field.errors:
        return csrf_error(None)
    abort(400)


def _page(view: reminders.RemindersView, token: str, *, one_click: bool = False):
    i18n.set_language(view.language)
    runtime = runtime_of(current_app)
    with_forms = not one_click and current_app.config.get("WTF_CSRF_ENABLED", True)
    renewal_urls = {
        mailbox.id: runtime.signer.renewal_url(mailbox.id, mailbox.expires_on)
        for mailbox in view.mailboxes
        if not mailbox.on_domain and not mailbox.renewed and mailbox.state != "deleted"
    }
    return render_template(
        "reminders.html",
        view=view,
        one_click=one_click,
        form_token=generate_csrf() if with_forms else None,
        renewal_urls=renewal_urls,
    ), 200


@blueprint.post("/rinnova/<token>/avvisi")
def renewal_page_reminders(token: str):
    """ "Non intendo rinnovare" (or "Riattiva gli avvisi") on the renewal page: the mailboxes it lists
    that could be renewed, for their current cycle; then back to the page."""
    runtime = runtime_of(current_app)
    try:
        link = runtime.signer.read_renewal_token(token)
    except TokenInvalid:
        return invalid_link_page()
    form = forms.RemindersForm()
    if not form.validate_on_submit():
        return _refused(form)
    today = runtime.today()
    with _db() as db_session:
        view = orders.describe_link(db_session, link, today)
        if view.state == orders.LinkState.NOT_FOUND:
            db_session.rollback()
            return invalid_link_page()
        cycles = [
            (mailbox.id, mailbox.expires_on)
            for mailbox in view.mailboxes
            if view.state == orders.LinkState.RENEWABLE and mailbox.orderable and not mailbox.auto_renew
        ]
        if form.action.data == "opt-out":
            reminders.opt_out_cycles(db_session, cycles, today=today, now=runtime.clock(), via=reminders.RENEWAL_PAGE)
        else:
            reminders.opt_back_in_cycles(db_session, cycles)
        db_session.commit()
    return redirect(url_for("web.renewal_link", token=token), 303)
