"""Platform events: the changes the PEC platform must act on, kept in ``platform_events`` and
delivered to it as signed webhooks (:mod:`~worker.events.queue`, the one writer of their rows;
:mod:`~worker.events.delivery`, the sender)."""
