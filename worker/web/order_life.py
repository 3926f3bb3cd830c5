"""The pages of a confirmed order's life: change its payment method, cancel it, start again.

- ``/ordine/<id>/metodo``: GET shows the methods still allowed for the order (the same rule as
  step 3); POST (CSRF) gives the order the chosen one and leads to its instructions, or to the
  checkout for a card or PayPal.  The checkout page, after a decline too, offers this choice.
- ``/ordine/<id>/annulla``: GET asks for confirmation and changes nothing; POST (CSRF) cancels
  the unpaid order.
- ``/ordine/<id>/nuovo``: POST only (CSRF): after a cancel or a lapse, a new order from the same
  link and cycle, while the mailboxes can still be renewed.

As every order page, reachable only from the browser session that holds the order.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from worker.rules.links import GROUP, RenewalLink
from worker.rules.vocabulary import GATEWAY_METHODS
from worker.services import orders
from worker.web import forms
from worker.web.errors import csrf_error
from worker.web.i18n import method_label
from worker.web.i18n import translate_in_context as t
from worker.web.order_session import db, load_order, now, remember_order, runtime, today

blueprint = Blueprint("life", __name__)


def _to_order(order):
    return redirect(url_for("web.order_status", public_id=order.public_id), 303)


def method_choices(db_session, order) -> tuple[list[tuple[str, str]], list[orders.PaymentOption]]:
    """The methods the order may still be paid with, as (value, label) for a form, and every option."""
    options = orders.payment_options(db_session, order, today())
    return [(option.method, method_label(option.method)) for option in options if option.available], options


@blueprint.route("/ordine/<public_id>/metodo", methods=["GET", "POST"])
def change_method(public_id: str):
    """Another payment method for a confirmed order awaiting payment."""
    with db() as db_session:
        order = load_order(db_session, public_id)
        if order.status != "awaiting_payment":
            return _to_order(order)  # a draft chooses its method at step 3; a paid or closed order keeps it
        offered, options = method_choices(db_session, order)
        if request.method == "POST":
            form = forms.MethodForm(offered)
        else:
            form = forms.MethodForm(offered, formdata=None, data={"method": order.payment_method})
        general: list[str] = []
        if request.method == "POST":
            if form.validate_on_submit():
                try:
                    orders.change_payment_method(
                        db_session, order, form.method.data, now=now(), today=today(), settings=runtime().settings
                    )
                except orders.OrderValidationError as error:
                    db_session.rollback()
                    general = list(error.errors.values())
                else:
                    db_session.commit()
                    if order.payment_method in GATEWAY_METHODS and runtime().settings.payment_gateway == "sandbox":
                        return redirect(url_for("web.checkout", public_id=public_id), 303)
                    return _to_order(order)
            elif form.csrf_token.errors:
                return csrf_error(None)
            forms.localise_errors(form)
        return render_template(
            "order_method.html",
            order=order,
            form=form,
            general=general,
            options=options,
            summary=orders.order_summary(order),
        ), (422 if request.method == "POST" else 200)


@blueprint.route("/ordine/<public_id>/annulla", methods=["GET", "POST"])
def cancel(public_id: str):
    """GET: what cancelling means, and the button; POST: cancel the unpaid order."""
    with db() as db_session:
        order = load_order(db_session, public_id)
        if order.status not in ("draft", "awaiting_payment"):
            return _to_order(order)
        form = forms.ButtonForm()
        general: list[str] = []
        if request.method == "POST":
            if not form.validate_on_submit():
                return csrf_error(None)
            try:
                orders.cancel_order(db_session, order, settings=runtime().settings)
            except orders.OrderValidationError as error:
                db_session.rollback()
                general = list(error.errors.values())
            else:
                db_session.commit()
                return _to_order(order)
        return render_template(
            "order_cancel.html", order=order, form=form, general=general, summary=orders.order_summary(order)
        ), (422 if general else 200)


@blueprint.post("/ordine/<public_id>/nuovo")
def start_again(public_id: str):
    """A new order from the link and cycle of a cancelled or lapsed order (the same as its Rinnova link's button)."""
    form = forms.ButtonForm()
    if not form.validate_on_submit():
        return csrf_error(None)
    with db() as db_session:
        order = load_order(db_session, public_id)
        if order.status not in ("cancelled", "lapsed"):
            return _to_order(order)
        # A group link ("Rinnova tutte") names its mailboxes: those of the order's lines.
        mailbox_ids = tuple(sorted(line.mailbox_id for line in order.lines)) if order.link_target == GROUP else ()
        link = RenewalLink(order.link_target, order.link_target_id, order.link_cycle, mailbox_ids)
        try:
            new_order = orders.start_order(db_session, link, today(), now())
        except orders.LinkNotUsable:
            db_session.rollback()
            flash(
                t(
                    "Non è possibile iniziare un nuovo ordine: la casella PEC è già stata rinnovata o non può più "
                    "essere rinnovata.",
                    "A new order cannot be started: the PEC mailbox has already been renewed or can no longer be "
                    "renewed.",
                )
            )
            return _to_order(order)
        db_session.commit()
        remember_order(new_order.public_id)
        return redirect(url_for("web.order_status", public_id=new_order.public_id), 303)
