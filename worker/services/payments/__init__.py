"""Payments: the step that completes a renewal.

- ``registration``: :func:`register_payment` registers one payment of a
  confirmed order (by hand, from a bank statement, or after a gateway charge),
  once per ``(order, reference)``, and renews the order's mailboxes.
- ``bank_statements``: :func:`import_bank_statement` matches the lines of a
  bank statement (CSV) to orders by the order number in the payment reference.
- ``checkout``: :func:`pay_order_with_gateway` charges a card / PayPal token at
  checkout ("intent, act, record") and registers the payment on success.
"""

from __future__ import annotations

from worker.services.payments.bank_statements import (
    ALREADY_REGISTERED,
    INVALID,
    REFUSED,
    REGISTERED,
    SKIPPED,
    UNMATCHED,
    WRONG_AMOUNT,
    BankImportReport,
    BankLineResult,
    BankStatementInvalid,
    find_order_numbers,
    import_bank_statement,
    parse_euro,
    read_bank_statement,
)
from worker.services.payments.checkout import (
    GatewayPaymentResult,
    complete_checkout_authentication,
    gateway_idempotency_key,
    pay_order_with_gateway,
)
from worker.services.payments.registration import (
    PaymentRefused,
    RegistrationResult,
    RenewedMailbox,
    register_payment,
)

__all__ = [
    "ALREADY_REGISTERED",
    "INVALID",
    "REFUSED",
    "REGISTERED",
    "SKIPPED",
    "UNMATCHED",
    "WRONG_AMOUNT",
    "BankImportReport",
    "BankLineResult",
    "BankStatementInvalid",
    "GatewayPaymentResult",
    "PaymentRefused",
    "RegistrationResult",
    "RenewedMailbox",
    "complete_checkout_authentication",
    "find_order_numbers",
    "gateway_idempotency_key",
    "import_bank_statement",
    "parse_euro",
    "pay_order_with_gateway",
    "read_bank_statement",
    "register_payment",
]
