"""Benchmark: N due auto-renew charges against the sandbox gateway at a simulated latency.

    .venv/bin/python bench/charges.py --mailboxes 20000 --latency-ms 300 --concurrency 32 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_bench

It empties and migrates the benchmark database (its name must contain
"bench"), seeds N auto-renew mailboxes whose charge is due today with
``generate_series`` in SQL (no ORM), each with a method the sandbox stored
(``sandbox_methods``, ``pm_sbx_…``, made from ``--token``), as its checkout and
its page for a new method store them; ``--imported-tokens`` gives each mailbox
the test token itself instead, as the import does.  Then it runs what ``pec-renewal run-daily``
runs for that date: the scan, then the charges, ``--concurrency`` at a time
(``GATEWAY_CONCURRENCY``), each sandbox call sleeping ``--latency-ms``.  Mail
is only queued (the outbox), not delivered: delivery has its own benchmark.

It checks the gateway's own record: one charge per mailbox, no key twice, no
mailbox charged twice.  The last line printed is a JSON summary; the ideal
rate is concurrency / latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/databases.py, however this is loaded

import psycopg
from databases import ensure_database, psycopg_url

from config.settings import Settings
from worker.rules.auto_renew import CHARGE_NOTICE, DEFAULT_CHARGE_PLAN
from worker.services.daily import charge_day, scan_day
from worker.services.runtime import Runtime
from worker.store import migrate

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_bench"


def reset_database(url: str) -> None:
    ensure_database(url)
    with psycopg.connect(psycopg_url(url), autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    migrate.upgrade(url)


def seed(url: str, count: int, expires_on: date, due_on: date, token: str, stored: bool = True) -> float:
    started = time.perf_counter()
    with psycopg.connect(psycopg_url(url)) as connection:
        connection.execute(
            "INSERT INTO accounts (login) SELECT 'bench' || g || '@example.it' FROM generate_series(1, %s) g", (count,)
        )
        connection.execute(
            "INSERT INTO holders (account_id, holder_key, name, kind, reference_email) "
            "SELECT id, md5(login), 'Titolare ' || id, 'private', login FROM accounts"
        )
        connection.execute(
            "INSERT INTO mailboxes (address, account_id, holder_id, reference_email, plan, extra_space_gb, "
            "extra_archive_gb, used_space_mb, expires_on, auto_renew, payment_method, renewal_years, promo, language) "
            "SELECT 'casella' || h.id || '@pec.bench.example.it', h.account_id, h.id, h.reference_email, 'standard', "
            "0, 0, 100, "
            "%s, true, %s, 1, false, 'it' FROM holders h",
            (expires_on, token),
        )
        if stored:
            # One stored method per mailbox, charged as the test token it was made from.
            connection.execute(
                "UPDATE mailboxes SET payment_method = 'pm_sbx_' || lpad(to_hex(id), 24, '0'), "
                "card_expires_on = DATE '2030-03-31'"
            )
            connection.execute(
                "INSERT INTO sandbox_methods (method_id, behaviour, brand, last4, exp_month, exp_year, created_at) "
                "SELECT payment_method, %s, 'Visa', '4242', 3, 2030, now() FROM mailboxes",
                (token,),
            )
        connection.execute(
            "INSERT INTO mailbox_schedule (mailbox_id, next_action_on) SELECT id, %s FROM mailboxes", (due_on,)
        )
        # The charge notice went out 30 days before expiry, as the scan sends it: a holder is
        # never charged without it (a cycle first seen on its charge day gets the notice
        # first, and is charged from the next day).
        connection.execute(
            "INSERT INTO notice_ledger (mailbox_id, cycle_expires_on, stage, kind, business_date) "
            "SELECT id, expires_on, %s, %s, expires_on - %s FROM mailboxes",
            (DEFAULT_CHARGE_PLAN.notice_stage.name, CHARGE_NOTICE, DEFAULT_CHARGE_PLAN.notice_days),
        )
        connection.execute("ANALYZE")
    return time.perf_counter() - started


def check_gateway_record(url: str) -> dict:
    with psycopg.connect(psycopg_url(url)) as connection:
        rows, keys = connection.execute(
            "SELECT count(*), count(DISTINCT idempotency_key) FROM sandbox_charges"
        ).fetchone()
        # renewal:{mailbox}:{cycle}:{attempt} -> more than one charge per mailbox and cycle?
        doubled = connection.execute(
            "SELECT count(*) FROM (SELECT split_part(idempotency_key, ':', 2), split_part(idempotency_key, ':', 3) "
            "FROM sandbox_charges GROUP BY 1, 2 HAVING count(*) > 1) d"
        ).fetchone()[0]
        renewed = connection.execute(
            "SELECT count(*) FROM mailboxes WHERE expires_on > %s", (date(2027, 3, 31),)
        ).fetchone()[0]
        intents = dict(connection.execute("SELECT status, count(*) FROM charge_intents GROUP BY status").fetchall())
        stored = connection.execute(
            "SELECT count(*) FROM sandbox_charges c JOIN sandbox_methods m ON m.method_id = c.payment_method"
        ).fetchone()[0]
    return {
        "charges_of_stored_methods": stored,
        "gateway_charges": rows,
        "distinct_keys": keys,
        "mailboxes_charged_twice": doubled,
        "mailboxes_renewed": renewed,
        "intents": intents,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32, help="GATEWAY_CONCURRENCY")
    parser.add_argument("--database-url", default=os.environ.get("PEC_RENEWAL_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--token", default="pm_card_visa", help="the test token every mailbox's method is made from")
    parser.add_argument(
        "--imported-tokens", action="store_true", help="the test token on each mailbox, not a stored method"
    )
    args = parser.parse_args(argv)

    expires_on = date(2027, 3, 31)
    today = expires_on - timedelta(days=7)
    reset_database(args.database_url)
    seed_seconds = seed(args.database_url, args.mailboxes, expires_on, today, args.token, not args.imported_tokens)
    print(f"seeded {args.mailboxes} auto-renew mailboxes in {seed_seconds:.1f}s", file=sys.stderr)

    settings = Settings.from_env(
        {
            "PEC_RENEWAL_DATABASE_URL": args.database_url,
            "PEC_RENEWAL_SANDBOX_LATENCY_MS": str(args.latency_ms),
            "PEC_RENEWAL_GATEWAY_CONCURRENCY": str(args.concurrency),
            "PEC_RENEWAL_SECRET_KEYS": "bench-key-0123456789abcdef0123456789abcdef",
            "PEC_RENEWAL_VAR_DIR": os.environ.get("PEC_RENEWAL_VAR_DIR", "/tmp/pec-renewal-bench"),
        }
    )
    runtime = Runtime(settings)
    try:
        started = time.perf_counter()
        scan = scan_day(runtime, today)
        scan_seconds = time.perf_counter() - started
        print(f"scan: {len(scan.charges_due)} charges due in {scan_seconds:.1f}s", file=sys.stderr)
        started = time.perf_counter()
        result = charge_day(runtime, today, scan.charges_due)
        charge_seconds = time.perf_counter() - started
    finally:
        runtime.close()

    record = check_gateway_record(args.database_url)
    rate = result.charges / charge_seconds if charge_seconds else 0.0
    ideal = args.concurrency / (args.latency_ms / 1000.0) if args.latency_ms else None
    summary = {
        "mailboxes": args.mailboxes,
        "stored_methods": not args.imported_tokens,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "seed_seconds": round(seed_seconds, 2),
        "scan_seconds": round(scan_seconds, 2),
        "charge_seconds": round(charge_seconds, 2),
        "charges_per_second": round(rate, 1),
        "ideal_charges_per_second": round(ideal, 1) if ideal else None,
        "ratio_to_ideal": round(rate / ideal, 3) if ideal else None,
        "outcomes": dict(result.outcomes),
        "errors": result.errors,
        **record,
        "no_double_charge": record["mailboxes_charged_twice"] == 0
        and record["gateway_charges"] == record["distinct_keys"],
    }
    print(json.dumps(summary, sort_keys=True))
    ok = summary["no_double_charge"] and record["gateway_charges"] == args.mailboxes and result.errors == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
