"""Start ``celery`` with this process's clock moved to ``PEC_RENEWAL_TEST_CLOCK`` (ISO datetime).

``python -m tests.faults.celery_at -A worker.celery_app worker …``: the fault
tests restart a killed worker "later" without waiting: time-machine moves the
wall clock (it keeps ticking from there) in the main process, and the forked
pool processes inherit it.  Later matters twice: the relay's claim leases of
the killed worker have run out, and kombu's Redis transport hands back the
killed worker's unacknowledged messages (older than the visibility timeout),
as a real restart an hour on would.  Without the variable it is plain celery.

``PEC_RENEWAL_TEST_KILL_AFTER_ANSWERS=n``: the payment gateway is wrapped so
that the worker's whole process group is SIGKILLed right after the n-th
answer to a charge in one pool process (the money has moved, the answer is
in memory, nothing is recorded).  ``PEC_RENEWAL_TEST_LOOKUPS_LOST=1``: every
``gateway.lookup`` answers "unknown", as when the gateway cannot be reached
to ask.  The hooks live here, not in production code.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import datetime

import worker.gateways
from worker.gateways import ChargeOutcome, ChargeResult


class FaultyGateway:
    """The real gateway, killing its worker (process group) after the n-th charge answer, or losing lookups."""

    def __init__(self, inner, *, kill_after_answers: int | None, lookups_lost: bool):
        self._inner, self._left, self._lookups_lost = inner, kill_after_answers, lookups_lost
        self._lock = threading.Lock()
        self.name = inner.name

    def charge(self, **kwargs):
        result = self._inner.charge(**kwargs)
        if self._left is not None:
            with self._lock:
                self._left -= 1
                if self._left <= 0:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
        return result

    def lookup(self, idempotency_key):
        if self._lookups_lost:
            return ChargeResult(ChargeOutcome.UNKNOWN, None, "gateway unreachable")
        return self._inner.lookup(idempotency_key)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _install_faulty_gateway(kill_after_answers: int | None, lookups_lost: bool) -> None:
    make_gateway = worker.gateways.make_gateway

    def faulty_make_gateway(*args, **kwargs):
        return FaultyGateway(
            make_gateway(*args, **kwargs), kill_after_answers=kill_after_answers, lookups_lost=lookups_lost
        )

    worker.gateways.make_gateway = faulty_make_gateway


def main() -> None:
    clock = os.environ.get("PEC_RENEWAL_TEST_CLOCK")
    if clock:
        import time_machine

        time_machine.travel(datetime.fromisoformat(clock), tick=True).start()
    answers = os.environ.get("PEC_RENEWAL_TEST_KILL_AFTER_ANSWERS")
    lookups_lost = os.environ.get("PEC_RENEWAL_TEST_LOOKUPS_LOST") == "1"
    if answers or lookups_lost:
        _install_faulty_gateway(int(answers) if answers else None, lookups_lost)
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
