"""Electronic invoices: issued in the payment's transaction, exported as FatturaPA files.

- :func:`record_invoice` writes a paid renewal's invoice in the caller's transaction (the
  registration of an order's payment, or the record of a successful auto-renew charge),
  ``issued`` without its number.  Without the seller settings, or without the buyer's
  billing address or tax identity, it is written ``waiting``, and issued when the data
  have come (:func:`worker.services.invoices.export.complete_waiting`).
- :func:`number_pending_invoices` is the one place numbers are given: every issued
  document without one, in the order of payment, from the year's counter row locked once
  until the caller's transaction commits, so the numbers of a year have no gaps whatever
  rolls back.  A registration calls it in its own transaction; the charge service once
  per batch, after its charges are recorded; ``invoices export`` before writing.
- :func:`record_credit_note` writes the credit note (TD04) of a refund of an invoice.
- ``export``: ``pec-renewal invoices export``.
"""

from worker.services.invoices.issue import (
    InvoiceRecord,
    buyer_from_holder,
    courtesy_copy,
    document_of,
    number_pending_invoices,
    record_credit_note,
    record_invoice,
)

__all__ = [
    "InvoiceRecord",
    "buyer_from_holder",
    "courtesy_copy",
    "document_of",
    "number_pending_invoices",
    "record_credit_note",
    "record_invoice",
]
