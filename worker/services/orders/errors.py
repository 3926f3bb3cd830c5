"""The errors of the order flow."""

from __future__ import annotations

from collections.abc import Mapping


class OrderError(Exception):
    """Base of the order errors."""


class OrderValidationError(OrderError):
    """Bad input at a step: ``errors`` maps a field name to a message; nothing was changed."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{key}: {value}" for key, value in self.errors.items()))


class OrderNotOpen(OrderValidationError):
    """The order is no longer a draft (confirmed, paid or cancelled): its steps cannot change."""


class LinkNotUsable(OrderError):
    """The link cannot start an order; ``state`` is the :class:`~worker.services.orders.LinkState` that says why."""

    def __init__(self, state: str):
        self.state = state
        super().__init__(f"this link cannot start an order: {state}")
