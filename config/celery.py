"""Celery and beat configuration, derived from the settings."""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab
from kombu import Exchange, Queue

from config.settings import Settings

#: Named queues: the scan is cheap and must not wait behind mail.
SCAN_QUEUE = "scan"
NOTICES_QUEUE = "notices"
MAIL_QUEUE = "mail"
#: Charges wait on the gateway's network: their own queue, so they never hold up notices or mail.
CHARGES_QUEUE = "charges"
#: Platform events wait on the platform's network: their own queue, so a slow platform holds up no email.
EVENTS_QUEUE = "events"
QUEUES = (SCAN_QUEUE, NOTICES_QUEUE, MAIL_QUEUE, CHARGES_QUEUE, EVENTS_QUEUE)

#: Hard time limit for any task; it must stay below the broker's visibility
#: timeout (3600 s, config/settings.py) or Redis would hand a running task to a
#: second worker.
TASK_TIME_LIMIT = 1800


def celery_config(settings: Settings) -> dict:
    hour, minute = settings.daily_scan_at
    config = {
        "broker_url": settings.broker_url,
        "broker_transport_options": settings.broker_transport_options,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": settings.timezone.key,
        "enable_utc": True,
        # Mail and money: acknowledge after the work, redeliver if a worker dies,
        # take one message at a time.  Every task is idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 120,
        # One direct exchange per queue, so a message lands in exactly one queue.
        "task_queues": tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES),
        "task_default_queue": NOTICES_QUEUE,
        "task_default_exchange": NOTICES_QUEUE,
        "task_default_routing_key": NOTICES_QUEUE,
        "task_routes": {
            "pec_renewal.daily_scan": {"queue": SCAN_QUEUE},
            "pec_renewal.notice_batch": {"queue": NOTICES_QUEUE},
            "pec_renewal.deliver_outbox": {"queue": MAIL_QUEUE},
            "pec_renewal.relay_outbox": {"queue": MAIL_QUEUE},
            "pec_renewal.charge_sweep": {"queue": SCAN_QUEUE},
            "pec_renewal.charge_batch": {"queue": CHARGES_QUEUE},
            "pec_renewal.deliver_platform_events": {"queue": EVENTS_QUEUE},
            "pec_renewal.retry_refunds": {"queue": CHARGES_QUEUE},
        },
        "beat_schedule": {
            # Fired every hour from the scan time to the end of the day: the
            # first firing scans, the others find the date claimed and stop, or
            # take over a scan that crashed (daily.claim_daily_run).
            "daily-scan": {
                "task": "pec_renewal.daily_scan",
                "schedule": crontab(hour=f"{hour}-23", minute=minute),
            },
            # Charge work (charges, retries, reconciliations): cheap to look for (an
            # indexed query), and every charge is claimed before the gateway is called,
            # so a sweep that overlaps another, or the notice scan, does nothing twice.
            # It also looks up, the same day, a charge whose worker died before recording
            # the gateway's answer (CHARGE_RECONCILE_AFTER_MINUTES after its claim).
            "charge-sweep": {
                "task": "pec_renewal.charge_sweep",
                "schedule": timedelta(minutes=15),
            },
            "relay-outbox": {
                "task": "pec_renewal.relay_outbox",
                "schedule": timedelta(minutes=1),
            },
            # Platform events: new ones and retries whose backoff has passed (worker.events.delivery).
            "deliver-platform-events": {
                "task": "pec_renewal.deliver_platform_events",
                "schedule": timedelta(minutes=1),
            },
            # Refunds whose gateway answer was lost (a timeout, a crash after the intent), asked
            # again with their own idempotency key, well within the hours a gateway keeps a key.
            "refunds-retry": {
                "task": "pec_renewal.retry_refunds",
                "schedule": timedelta(minutes=15),
            },
        },
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        "beat_scheduler": "worker.celery_setup:BeatScheduler",
        "worker_hijack_root_logger": False,
    }
    return config
