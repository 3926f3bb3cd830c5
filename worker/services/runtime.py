"""What one process needs, built once from the settings: database, mailer, renderer, signer.

The CLI and the web app build a ``Runtime`` from the settings they were given;
Celery worker processes build one lazily from the environment (``current()``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parseaddr
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, warn_generated_secret_key
from worker.events.delivery import EventSender
from worker.gateways import make_gateway, sandbox_webhooks
from worker.mail.emails import EmailRenderer
from worker.mail.mailers import Mailer, make_mailer
from worker.mail.outbox import OutboxRelay
from worker.rules.links import LinkSigner
from worker.services.charges import ChargePlan
from worker.store.db import make_engine, make_session_factory


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, the ORM's mappers) out of the collector's sight.

    A full collection otherwise walks all of them each time a batch of rows
    is allocated: on a normal day it tripled the time to read 20,000 due rows
    (bench/RESULTS.md).  Call once, after start-up imports.
    """
    gc.collect()
    gc.freeze()


def utc_now() -> datetime:
    return datetime.now(UTC)


def business_date(now: datetime, settings: Settings) -> date:
    """The calendar date in the business time zone (Europe/Rome by default)."""
    return now.astimezone(settings.timezone).date()


#: Connections a worker or CLI process keeps open, at most, besides one per charge thread (below).
#: SQLAlchemy's default allows the same 15 (5 kept, 10 "overflow"), but closes every overflow
#: connection when it is given back: the charges' threads opened and closed 128 connections per
#: 2,000 charges that way (380 to 430 on a slower machine), a server process forked for each.
#: The pool opens a connection only when a thread needs one, so a single-threaded process (the
#: mail and notice workers) still holds one or two.  Size PostgreSQL's ``max_connections`` for
#: this per worker process (docs/capacity.md).
POOL_SIZE = 15


def pool_size(settings: Settings) -> int:
    """The engine's pool: ``POOL_SIZE``, and at least one connection per charge thread
    (``GATEWAY_CONCURRENCY``) plus the thread that runs them.

    A pool smaller than the threads starves some of them: SQLAlchemy's queue hands a
    returned connection to whichever thread asks next, and a charge thread asks again at
    once when the gateway answers at once.  With 32 threads on 15 connections and the
    sandbox at zero latency, 17 threads waited the whole run for their first connection
    (bench/invoices.py, 2,000 charges: 22.8 s of 24.6 s), and past ``pool_timeout`` (30 s)
    in a longer run their charges failed.  Each charge thread holds at most one connection
    at a time, never across a gateway call, so this many are never all waited for.
    """
    return max(POOL_SIZE, settings.gateway_concurrency + 1)


@dataclass
class Runtime:
    settings: Settings
    clock: Callable[[], datetime] = utc_now
    mailer_override: Mailer | None = field(default=None, repr=False)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url, pool_size=pool_size(self.settings), max_overflow=0)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def signer(self) -> LinkSigner:
        warn_generated_secret_key(self.settings)
        return LinkSigner(self.settings.secret_keys, self.settings.base_url, self.settings.link_max_age_days)

    @cached_property
    def renderer(self) -> EmailRenderer:
        settings = self.settings
        return EmailRenderer(
            mail_from=settings.mail_from,
            signer=self.signer,
            terms_url=settings.terms_url,
            manual_url=settings.manual_url,
            support_url=settings.support_url,
        )

    @cached_property
    def mailer(self) -> Mailer:
        return self.mailer_override or make_mailer(self.settings)

    @cached_property
    def gateway(self):
        return make_gateway(self.settings, self.session_factory, clock=self.clock)

    @cached_property
    def charge_plan(self):
        settings = self.settings
        return ChargePlan(
            notice_days=settings.charge_notice_days,
            charge_days=settings.charge_days,
            reconcile_after_minutes=settings.charge_reconcile_after_minutes,
            split_payment_for_pa=settings.split_payment_for_pa,
        )

    @property
    def charge_options(self) -> dict:
        """What every call of the charge service takes from the settings: the clock, the notice
        stages, the Message-ID domain, the charge plan and the seller of the invoices."""
        return {
            "clock": self.clock,
            "stages": self.settings.notice_stages,
            "mail_domain": self.mail_domain,
            "plan": self.charge_plan,
            "seller": self.settings.seller,
        }

    @cached_property
    def mail_domain(self) -> str:
        return parseaddr(self.settings.mail_from)[1].rpartition("@")[2]

    @cached_property
    def relay(self) -> OutboxRelay:
        return OutboxRelay(
            self.session_factory,
            self.mailer,
            self.renderer,
            clock=self.clock,
            max_attempts=self.settings.outbox_max_attempts,
            batch_size=self.settings.relay_batch_size,
            outcome_group=self.settings.relay_outcome_group,
        )

    @cached_property
    def event_sender(self) -> EventSender:
        with self.session_factory() as session:
            engine = session.get_bind()
        return EventSender(
            engine,
            url=self.settings.platform_webhook_url,
            secret=self.settings.platform_webhook_secret,
            clock=self.clock,
        )

    @cached_property
    def sandbox_webhook_sender(self) -> EventSender:
        """The sandbox's webhooks to our own endpoint (``SANDBOX_WEBHOOK_URL``), by the same sender."""
        with self.session_factory() as session:
            engine = session.get_bind()
        return EventSender(
            engine,
            url=self.settings.sandbox_webhook_url,
            secret=self.settings.sandbox_webhook_secret,
            clock=self.clock,
            table=sandbox_webhooks.TABLE,
            stream=sandbox_webhooks.STREAM,
            label="sandbox webhook",
        )

    def today(self) -> date:
        return business_date(self.clock(), self.settings)

    def close(self) -> None:
        if "mailer" in self.__dict__:
            self.mailer.close()
        if "gateway" in self.__dict__:
            self.gateway.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


_current: Runtime | None = None
_lock = threading.Lock()


def current() -> Runtime:
    """This process's runtime, built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime(Settings.from_env())
        return _current


def install(runtime: Runtime | None) -> None:
    """Set (or clear) this process's runtime: used by the CLI and by tests."""
    global _current
    with _lock:
        if _current is not None and _current is not runtime:
            _current.close()
        _current = runtime
