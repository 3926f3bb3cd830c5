"""The forms of the order steps (Flask-WTF: CSRF on every POST).

These check only the shape of the input: a choice among the offered ones, a
whole number in range, text of a sane length with no control characters, no
invisible or replacement characters, and codes and addresses in plain ASCII
(look-alike letters are refused).  The business rules (plan limits, space,
checksums, e-invoicing by kind, payment delays) are the order service's:
its :class:`worker.services.orders.OrderValidationError` messages are put next to the
field they name.
"""

from __future__ import annotations

import re
import unicodedata

from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, RadioField, SelectField, StringField
from wtforms.validators import AnyOf, InputRequired, NumberRange, Optional, ValidationError

from worker.rules.vocabulary import HOLDER_KIND_LABELS, HOLDER_KINDS, PLAN_LABELS, label
from worker.web.i18n import language
from worker.web.i18n import translate_in_context as t

try:  # WTForms 3.3 deprecates (value, label) tuples in favour of SelectChoice
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None


def choices(pairs) -> list:
    pairs = list(pairs)
    if SelectChoice is None:
        return pairs
    return [SelectChoice(value, label) for value, label in pairs]


#: Extra GB the form accepts at most (the plan's own limits are the service's).
MAX_EXTRA_GB = 100


def kind_label(kind: str) -> str:
    """A holder kind's label in the page's language."""
    return label(HOLDER_KIND_LABELS, kind, language())


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` is not acceptable text, or None."""
    for character in value:
        if character in "\r\n\t" and multiline:
            continue
        category = unicodedata.category(character)
        if category in ("Cc", "Cs", "Co", "Cn"):
            return t(
                "Contiene caratteri di controllo non ammessi.", "Contains control characters that are not allowed."
            )
        if category == "Cf" or character == "\ufffd":
            return t("Contiene caratteri invisibili o non validi.", "Contains invisible or invalid characters.")
    return None


class CleanText:
    """No control, invisible or replacement characters (a CR/LF too, unless ``multiline``)."""

    def __init__(self, multiline: bool = False):
        self.multiline = multiline

    def __call__(self, form, field) -> None:
        if field.data and (problem := text_problem(field.data, multiline=self.multiline)):
            raise ValidationError(problem)


class PlainAscii:
    """Codes and addresses: printable ASCII only, so look-alike letters (Cyrillic а, fullwidth ０) are refused."""

    def __call__(self, form, field) -> None:
        if field.data and not all(" " <= character <= "~" for character in field.data):
            raise ValidationError(
                t(
                    "Usi solo lettere e cifre senza accenti (caratteri ASCII).",
                    "Use only unaccented letters and digits (ASCII).",
                )
            )


def _strip(value):
    return value.strip() if isinstance(value, str) else value


_WHOLE_NUMBER_RE = re.compile(r"[0-9]{1,6}")


def whole_number(value) -> int:
    """``value`` written with ASCII digits only.  Python's ``int()`` also takes "１", "٣", "1_0" and
    surrounding blanks: look-alikes that are refused here rather than quietly read as numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not _WHOLE_NUMBER_RE.fullmatch(value):
        raise ValueError("not a whole number in ASCII digits")
    return int(value)


class WholeNumberField(IntegerField):
    """An IntegerField that reads ASCII digits only, with its message in the page's language."""

    def process_formdata(self, valuelist):
        if not valuelist or valuelist[0] == "":
            return
        try:
            self.data = whole_number(valuelist[0])
        except ValueError:
            self.data = None
            raise ValueError(t("Indichi un numero intero, solo cifre.", "Enter a whole number, digits only.")) from None


class _MaxLength:
    """At most ``maximum`` characters; the message is worded when the form is checked, in the page's language."""

    def __init__(self, maximum: int):
        self.maximum = maximum

    def __call__(self, form, field) -> None:
        if field.data and len(field.data) > self.maximum:
            raise ValidationError(t("Al massimo {n} caratteri.", "At most {n} characters.", n=self.maximum))


def _length(maximum: int) -> _MaxLength:
    return _MaxLength(maximum)


# -- Step 1: Gestione caselle PEC ---------------------------------------------------------------


def mailboxes_form(mailboxes, *, account_order: bool, data=None) -> FlaskForm:
    """A form with, per mailbox id N: ``plan-N``, ``extra_space_gb-N``, ``extra_archive_gb-N``,
    ``confirm_archive_deletion-N`` and, for an account order, ``renew-N``.  The names are the
    order service's error keys."""

    required = t("Campo obbligatorio.", "This field is required.")
    whole = t("Indichi un numero intero da 0 a {n}.", "Enter a whole number from 0 to {n}.", n=MAX_EXTRA_GB)
    plans = choices(PLAN_LABELS.items())

    class MailboxesForm(FlaskForm):
        pass

    for mailbox in mailboxes:
        number = mailbox.id
        if mailbox.on_domain or not mailbox.orderable:
            continue
        setattr(MailboxesForm, f"plan-{number}", RadioField(choices=plans, validators=[InputRequired(required)]))
        for extra in ("extra_space_gb", "extra_archive_gb"):
            setattr(
                MailboxesForm,
                f"{extra}-{number}",
                WholeNumberField(
                    validators=[Optional(), NumberRange(0, MAX_EXTRA_GB, whole)],
                    default=0,
                    render_kw={"inputmode": "numeric", "min": 0, "max": MAX_EXTRA_GB},
                ),
            )
        setattr(MailboxesForm, f"confirm_archive_deletion-{number}", BooleanField(default=False))
        if account_order:
            setattr(MailboxesForm, f"renew-{number}", BooleanField(default=True))
    if data is not None:  # a GET: show the current choices, read nothing from the request
        return MailboxesForm(formdata=None, data=data)
    return MailboxesForm()


# -- Step 2: Dati intestatario --------------------------------------------------------------------


class HolderForm(FlaskForm):
    name = StringField(filters=[_strip], validators=[InputRequired(), _length(200), CleanText()])
    kind = SelectField(choices=choices((kind, kind) for kind in HOLDER_KINDS), validators=[InputRequired()])
    reference_email = StringField(filters=[_strip], validators=[InputRequired(), _length(254), PlainAscii()])
    tax_code = StringField(filters=[_strip], validators=[Optional(), _length(20), PlainAscii()])
    vat_number = StringField(filters=[_strip], validators=[Optional(), _length(20), PlainAscii()])
    postal_address = StringField(filters=[_strip], validators=[Optional(), _length(300), CleanText()])
    einvoice_code = StringField(filters=[_strip], validators=[Optional(), _length(254), PlainAscii()])
    cig = StringField(filters=[_strip], validators=[Optional(), _length(10), PlainAscii()])
    cup = StringField(filters=[_strip], validators=[Optional(), _length(15), PlainAscii()])

    FIELDS = (
        "name",
        "kind",
        "reference_email",
        "tax_code",
        "vat_number",
        "postal_address",
        "einvoice_code",
        "cig",
        "cup",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        required = t("Campo obbligatorio.", "This field is required.")
        for field in (self.name, self.kind, self.reference_email):
            for validator in field.validators:
                if isinstance(validator, InputRequired):
                    validator.message = required
        self.kind.choices = choices((kind, kind_label(kind)) for kind in HOLDER_KINDS)

    def holder_data(self) -> dict[str, str | None]:
        return {name: (getattr(self, name).data or None) for name in self.FIELDS}


# -- Step 3: Modulo ordine ------------------------------------------------------------------------


class PaymentForm(FlaskForm):
    method = RadioField(choices=[], validators=[InputRequired()])
    years = SelectField(choices=[], coerce=whole_number, validators=[InputRequired()])

    def __init__(self, methods: list[tuple[str, str]], max_years: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.method.choices = choices(methods)
        self.method.validators[0].message = t("Scelga una modalità di pagamento.", "Choose a payment method.")
        self.years.choices = choices(
            (n, t("{n} anno", "{n} year", n=n) if n == 1 else t("{n} anni", "{n} years", n=n))
            for n in range(1, max_years + 1)
        )
        self.years.validators[0].message = t("Scelga la frequenza di rinnovo.", "Choose the renewal frequency.")


class MethodForm(FlaskForm):
    """Another payment method for a confirmed order (its amount and years stay)."""

    method = RadioField(choices=[], validators=[InputRequired()])

    def __init__(self, methods: list[tuple[str, str]], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.method.choices = choices(methods)
        self.method.validators[0].message = t("Scelga una modalità di pagamento.", "Choose a payment method.")


def _invalid_choice_messages(form: FlaskForm) -> None:
    """Replace WTForms' English "Not a valid choice" with the page's language."""
    message = t("Scelta non valida.", "Not a valid choice.")
    for field in form:
        # "Not a valid choice.", and "Invalid Choice: could not coerce." for a value that is not a number.
        field.errors = [message if "valid choice" in str(error).lower() else error for error in field.errors]


# -- Step 4: condizioni contrattuali --------------------------------------------------------------


class TermsForm(FlaskForm):
    """The two approvals of step 4; whether each is required is the order service's rule."""

    #: The general terms of contract and the operating manual.
    accept = BooleanField()
    #: The specific approval of the clauses of artt. 1341-1342 c.c. (``UNFAIR_TERMS_CLAUSES``).
    approve_clauses = BooleanField()


# -- Step 5 and the buttons that only POST --------------------------------------------------------


class ButtonForm(FlaskForm):
    """A form with nothing but its CSRF token: start the order, confirm it."""


class RemindersForm(FlaskForm):
    """The reminders' buttons: ``action`` is "opt-out" (no more expiry reminders this cycle) or "opt-in"."""

    action = StringField(validators=[InputRequired(), AnyOf(("opt-out", "opt-in"))])


class CheckoutForm(FlaskForm):
    payment_token = StringField(filters=[_strip], validators=[InputRequired(), _MaxLength(100), PlainAscii()])


def localise_errors(form: FlaskForm) -> None:
    _invalid_choice_messages(form)
