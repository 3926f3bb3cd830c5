"""Electronic invoices: issued in the payment's transaction, exported as FatturaPA files.

- :func:`record_invoice` writes a paid renewal's invoice in the caller's transaction (the
  registration of an order's payment, or the record of a successful auto-renew charge).
  It numbers it at once from the year's counter row, locked until that transaction
  commits, so the numbers of a year have no gaps whatever rolls back.  Without the
  seller settings, or without the buyer's billing address or tax identity, the invoice
  is written ``waiting`` and numbered later, when the data have come
  (:func:`worker.services.invoices.export.complete_waiting`).
- :func:`record_credit_note` writes the credit note (TD04) of a refund of an invoice.
- ``export``: ``pec-renewal invoices export``.
"""

from worker.services.invoices.issue import (
    InvoiceRecord,
    buyer_from_holder,
    courtesy_copy,
    document_of,
    number_invoice,
    record_credit_note,
    record_invoice,
)

__all__ = [
    "InvoiceRecord",
    "buyer_from_holder",
    "courtesy_copy",
    "document_of",
    "number_invoice",
    "record_credit_note",
    "record_invoice",
]
