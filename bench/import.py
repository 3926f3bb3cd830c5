"""Import of a big CSV file against PostgreSQL ``COPY`` of the same file into a bare table.

    .venv/bin/python bench/import.py --mailboxes 1000000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench_import

Generates a valid CSV with the import's columns (deterministic: a mix of
private holders with a codice fiscale, companies, sole proprietors and
professionals with a partita IVA and an SDI code or PEC address, a few public
administrations, mailboxes on customer domains, auto-renew mailboxes with a
card or PayPal, promos, English holders, holders with several mailboxes).

Then, alternately in one run, it times:

- the baseline, in this process: ``COPY bare_table FROM STDIN (FORMAT csv,
  HEADER true)`` of the file's bytes through psycopg's ``cursor.copy`` into a
  table of text columns without indexes, and the commit;
- the import, in a child process so that its peak RSS is its own: what
  ``pec-renewal import mailboxes`` runs (``count_records`` for the progress
  bar, then ``import_mailboxes``), into emptied tables, so on PostgreSQL's
  bulk-load path (secondary indexes and foreign keys dropped for the load
  and rebuilt, see ``worker/store/bulk_load.py``).  Its phases (the checking
  thread's CPU, each kind of SQL statement, each index rebuilt) go to stderr.

Each import starts from empty tables; after the rounds, one more import of
the same file over the imported fleet times the re-import (every row
found unchanged), reported beside the target but not part of it.

Then the **database's floor** (``--floor-rounds``, alternating with the same
COPY baseline): the imported fleet's own final rows (``accounts``,
``domains``, ``holders``, ``mailboxes``, dumped once with binary ``COPY
TO``) written back into the emptied tables with binary ``COPY`` on the
importer's own bulk-load path (``worker.store.bulk_load.BulkLoad``: the same
indexes and constraints dropped and rebuilt, in one transaction).  No
checking, no staging, no joins: what any importer producing this fleet must
at least have PostgreSQL do.  With the import's checking thread's CPU it
gives ``best_ratio_with_this_checking``: the ratio an import could reach if
the checking and the floor's writes shared every core perfectly and only the
rebuild, which needs every row, came after them.  Neither is part of the
target; they say how far a better importer could go on this machine.

Progress goes to stderr; the last line is a JSON summary.  The target:
import ≤ 5 × COPY.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/databases.py, however this is loaded

from databases import ensure_database, psycopg_url
from stdnum import luhn
from stdnum.it import codicefiscale

from worker.rules.import_rows import KNOWN_COLUMNS
from worker.rules.schedule import DEFAULT_STAGES
from worker.services.demo import COMPANIES, FIRST_NAMES, LAST_NAMES
from worker.services.importer import count_records, import_mailboxes
from worker.store import migrate
from worker.store.bulk_load import BulkLoad, copy_into
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Base

TARGET_RATIO = 5.0
#: The import file's columns, every one (the import's own list).
CSV_COLUMNS = list(KNOWN_COLUMNS)
FIRST_EXPIRY = date(2027, 1, 1)
#: Codes drawn from pools: generating a checksum per row would time the generator.
POOL = 5000
BARE_TABLE = "bench_import_bare"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The file


def _code_pools(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """Valid personal codici fiscali, partite IVA and 11-digit codici fiscali of public bodies."""
    letters = "BCDFGLMNPRSTVZ"
    tax_codes, vat_numbers, agency_codes = [], [], []
    for _ in range(POOL):
        body = (
            "".join(rng.choice(letters) for _ in range(6))
            + f"{rng.randrange(40, 99):02d}"
            + rng.choice("ABCDEHLMPRST")
            + f"{rng.randrange(1, 28):02d}"
            + rng.choice(["H501", "F205", "L219", "A944", "G273"])
        )
        tax_codes.append(body + codicefiscale.calc_check_digit(body))
        body = f"{rng.randrange(10**6, 10**7):07d}{rng.randrange(1, 101):03d}"
        vat_numbers.append(body + luhn.calc_check_digit(body))
        body = f"8{rng.randrange(10**5, 10**6):06d}{rng.randrange(1, 101):03d}"
        agency_codes.append(body + luhn.calc_check_digit(body))
    return tax_codes, vat_numbers, agency_codes


def write_csv(path: Path, rows: int, seed: int = 2026) -> None:
    """``rows`` valid mailboxes, grouped under holders of 1 to 6 mailboxes."""
    rng = random.Random(seed)
    tax_codes, vat_numbers, agency_codes = _code_pools(rng)
    expiries = [(FIRST_EXPIRY + timedelta(days=day)).isoformat() for day in range(3 * 365)]
    plans = ["standard", "standard", "standard", "pro", "pro", "premium"]
    mailboxes_per_holder = [1, 1, 1, 1, 2, 2, 3, 6]
    width = len(CSV_COLUMNS)
    index = {name: position for position, name in enumerate(CSV_COLUMNS)}
    written = 0
    holder = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        lines: list[list[str]] = []
        while written < rows:
            holder += 1
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            person = f"{first.lower()}.{last.lower()}{holder}"
            kind_draw = rng.random()
            base = [""] * width
            base[index["account"]] = f"{person}@provider.example.it"
            base[index["language"]] = "en" if holder % 7 == 0 else "it"
            if kind_draw < 0.6:
                base[index["holder_kind"]] = "private"
                base[index["holder_name"]] = f"{first} {last}"
                base[index["reference_email"]] = f"{person}@example.it"
                if holder % 2:
                    base[index["tax_code"]] = tax_codes[holder % POOL]
            elif kind_draw < 0.99:
                kind = rng.choice(["company", "sole_proprietor", "professional"])
                company = rng.choice(COMPANIES) if kind == "company" else f"{first} {last}"
                base[index["holder_kind"]] = kind
                base[index["holder_name"]] = f"{company} {holder}" + (" S.r.l." if kind == "company" else "")
                base[index["reference_email"]] = f"amministrazione{holder}@{last.lower()}.example.it"
                base[index["vat_number"]] = vat_numbers[holder % POOL]
                if holder % 3 == 0:
                    base[index["einvoice_code"]] = f"fatture{holder}@pec.{last.lower()}.example.it"
                else:
                    base[index["einvoice_code"]] = rng.choice(["0000000", "M5UXCR1", "KRRH6B9"])
                base[index["postal_address"]] = f"Via Roma {holder % 300 + 1}, 00100 Roma" if holder % 4 == 0 else ""
            else:
                base[index["holder_kind"]] = "public_administration"
                base[index["holder_name"]] = f"Comune di Esempio {holder}"
                base[index["reference_email"]] = f"protocollo{holder}@comune.example.it"
                base[index["tax_code"]] = agency_codes[holder % POOL]
                base[index["einvoice_code"]] = f"UF{holder % 10000:04d}"
                base[index["cig"]] = f"Z{holder % 10**9:09d}"
            on_domain = holder % 11 == 0
            domain = f"{last.lower()}{holder}.it"
            domain_expiry = expiries[(holder * 7) % len(expiries)]
            for box in range(rng.choice(mailboxes_per_holder)):
                if written == rows:
                    break
                written += 1
                cells = list(base)
                plan = rng.choice(plans)
                cells[index["plan"]] = plan
                cells[index["used_space_mb"]] = str(written % 900)
                if on_domain:
                    cells[index["address"]] = f"casella{box}@pec.{domain}"
                    cells[index["domain"]] = domain
                    cells[index["domain_expires_on"]] = domain_expiry
                else:
                    cells[index["address"]] = f"{person}.{box}@pec.provider.example.it"
                    cells[index["expires_on"]] = expiries[written % len(expiries)]
                    if written % 9 == 0:
                        cells[index["auto_renew"]] = "true"
                        if written % 2:
                            cells[index["payment_method"]] = "pm_card_visa"
                            cells[index["card_expiry"]] = f"{2027 + written % 4}-{written % 12 + 1:02d}"
                        else:
                            cells[index["payment_method"]] = "paypal_ok"
                    if written % 13 == 0:
                        cells[index["promo"]] = "true"
                        cells[index["renewal_years"]] = str(1 + written % 2)
                    elif written % 5 == 0:
                        cells[index["renewal_years"]] = str(1 + written % 3)
                if plan != "standard" and written % 4 == 0:
                    cells[index["extra_archive_gb"]] = str(1 + written % 3)
                if written % 6 == 0:
                    cells[index["extra_space_gb"]] = "1"
                lines.append(cells)
            if len(lines) >= 10000:
                writer.writerows(lines)
                lines.clear()
        writer.writerows(lines)


# --------------------------------------------------------------------------
# The two things timed


def copy_baseline(url: str, path: Path) -> float:
    """Seconds to ``COPY`` the file's bytes into a bare table of text columns, commit included."""
    columns = ", ".join(f"{name} text" for name in CSV_COLUMNS)
    with psycopg.connect(psycopg_url(url)) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {BARE_TABLE}")
        connection.execute(f"CREATE TABLE {BARE_TABLE} ({columns})")
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY {BARE_TABLE} FROM STDIN (FORMAT csv, HEADER true)") as copy:
                with path.open("rb") as file:
                    while block := file.read(1 << 20):
                        copy.write(block)
        connection.commit()
        seconds = time.perf_counter() - started
        connection.execute(f"DROP TABLE {BARE_TABLE}")
        connection.commit()
    return seconds


def empty_tables(url: str) -> None:
    with psycopg.connect(psycopg_url(url)) as connection:
        connection.execute(
            "TRUNCATE notice_ledger, outbox_queue, outbox_messages, charge_intents, renewal_order_lines,"
            " renewal_orders, mailboxes, domains, holders, accounts RESTART IDENTITY CASCADE"
        )
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE accounts, holders, domains, mailboxes")


#: The tables an import writes, in the order their rows can be loaded.
FLEET_TABLES = ("accounts", "domains", "holders", "mailboxes")


def dump_fleet(url: str, directory: Path) -> dict[str, Path]:
    """Each of :data:`FLEET_TABLES`' rows as binary ``COPY`` data in a file of ``directory``."""
    files = {}
    with psycopg.connect(psycopg_url(url)) as connection, connection.cursor() as cursor:
        for table in FLEET_TABLES:
            files[table] = directory / f"{table}.copy"
            # In the order of the model's columns, which the floor's COPY FROM names.
            columns = ", ".join(Base.metadata.tables[table].columns.keys())
            with (
                files[table].open("wb") as file,
                cursor.copy(f"COPY {table} ({columns}) TO STDOUT (FORMAT binary)") as copy,
            ):
                for block in copy:
                    file.write(block)
    return files


def database_floor(url: str, files: dict[str, Path]) -> dict:
    """Seconds to write ``files`` back into the emptied tables on the importer's bulk-load path.

    One transaction, as an import: the importer's own drops (``BulkLoad.start``),
    binary ``COPY`` of each table's final rows, the sequences set past them,
    the importer's own rebuild, the commit.
    """
    empty_tables(url)
    engine = make_engine(url)
    timings: dict[str, float] = {}

    @contextmanager
    def timed(phase: str):
        started = time.perf_counter()
        yield
        timings[phase] = time.perf_counter() - started

    try:
        started = time.perf_counter()
        with engine.begin() as connection:
            bulk = BulkLoad.start(connection)
            if bulk is None:
                raise SystemExit("the floor needs an empty fleet, and mailboxes is not empty")
            for table in FLEET_TABLES:
                with timed(table), files[table].open("rb") as file:
                    copy_into(
                        connection,
                        Base.metadata.tables[table],
                        iter(lambda: file.read(1 << 20), b""),
                        options="FORMAT binary",
                    )
                connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} HAVING max(id) > 0"
                )
            with timed("rebuild"):
                bulk.rebuild(connection, timed)  # each index and constraint, then the whole
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {"seconds": seconds, "timings": {phase: round(value, 2) for phase, value in timings.items()}}


def run_import(url: str, path: Path) -> dict:
    """The import in a child process (``--child``); its own timing and peak RSS."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--database-url", url],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(url: str, path: Path) -> None:
    """What ``pec-renewal import mailboxes`` runs, timed; prints JSON."""
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    total = count_records(path)
    last = [0.0]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 5:
            last[0] = now
            log(f"    import: {done:,} of {2 * total:,} ({now - started:.0f} s)")

    report = import_mailboxes(session_factory, path, stages=DEFAULT_STAGES, progress=progress)
    seconds = time.perf_counter() - started
    engine.dispose()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": rss_before / 1024,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rows": report.rows,
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "domains": report.domains,
                "bulk": report.bulk,
                "timings": {phase: round(seconds, 2) for phase, seconds in report.timings.items()},
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mailboxes",
        "--rows",
        dest="rows",
        type=int,
        default=1_000_000,
        help="the file's rows, one mailbox each (--rows is the older name)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "PEC_RENEWAL_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench_import"
        ),
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed COPY/import pairs (medians are reported)")
    parser.add_argument("--csv", type=Path, help="keep the generated file here (reused if it exists)")
    parser.add_argument(
        "--floor-rounds",
        type=int,
        default=2,
        help="timed COPY/database-floor pairs after the imports (0: no floor)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.database_url, args.child)
        return

    ensure_database(args.database_url)
    migrate.upgrade(args.database_url)
    with tempfile.TemporaryDirectory(prefix="pec-bench-import-") as scratch:
        path = args.csv or Path(scratch) / f"mailboxes-{args.rows}.csv"
        if not path.exists():
            started = time.perf_counter()
            write_csv(path, args.rows)
            seconds = time.perf_counter() - started
            log(f"generated {args.rows:,} rows ({path.stat().st_size / 2**20:.0f} MB) in {seconds:.1f} s")
        copy_times, import_times, imports = [], [], []
        for round_number in range(1, args.rounds + 1):
            # Alternate the two so that a noisy neighbour hurts both alike.
            copy_times.append(copy_baseline(args.database_url, path))
            log(f"round {round_number}: COPY {copy_times[-1]:.2f} s")
            empty_tables(args.database_url)
            imports.append(run_import(args.database_url, path))
            import_times.append(imports[-1]["seconds"])
            log(
                f"round {round_number}: import {import_times[-1]:.2f} s"
                f" ({'bulk-load path' if imports[-1]['bulk'] else 'normal path'}),"
                f" peak RSS {imports[-1]['peak_rss_mb']:.0f} MB, ratio {import_times[-1] / copy_times[-1]:.2f}"
            )
            log(f"round {round_number}: import phases (s) {json.dumps(imports[-1]['timings'])}")
        reimport = run_import(args.database_url, path)
        log(f"re-import over the imported fleet (every row unchanged): {reimport['seconds']:.2f} s")
        log(f"re-import phases (s) {json.dumps(reimport['timings'])}")
        floors, floor_copy_times = [], []
        if args.floor_rounds > 0:
            files = dump_fleet(args.database_url, Path(scratch))
        for round_number in range(1, args.floor_rounds + 1):
            floor_copy_times.append(copy_baseline(args.database_url, path))
            floors.append(database_floor(args.database_url, files))
            log(
                f"floor round {round_number}: COPY {floor_copy_times[-1]:.2f} s,"
                f" the fleet's final rows written back {floors[-1]['seconds']:.2f} s"
                f" (ratio {floors[-1]['seconds'] / floor_copy_times[-1]:.2f}) {json.dumps(floors[-1]['timings'])}"
            )
    if any(result["created"] != args.rows for result in imports) or reimport["unchanged"] != args.rows:
        raise SystemExit(f"the import did not write {args.rows} rows: {imports} {reimport}")

    copy_seconds, import_seconds = statistics.median(copy_times), statistics.median(import_times)
    ratio = import_seconds / copy_seconds
    children_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = {
        "mailboxes": args.rows,
        "rows": args.rows,
        "rounds": args.rounds,
        "copy_seconds": round(copy_seconds, 2),
        "import_seconds": round(import_seconds, 2),
        "ratio": round(ratio, 2),
        "rows_per_second": round(args.rows / import_seconds),
        "reimport_seconds": round(reimport["seconds"], 2),
        "peak_rss_mb": round(max(children_peak_mb, *(result["peak_rss_mb"] for result in imports)), 1),
        "rss_at_start_mb": round(imports[0]["rss_before_mb"], 1),
        "bulk_load_path": all(result["bulk"] for result in imports),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
    }
    if floors:
        summary.update(floor_summary(floors, floor_copy_times, imports))
    print(json.dumps(summary))


def floor_summary(floors: list[dict], copy_times: list[float], imports: list[dict]) -> dict:
    """The database's floor as a ratio to its own COPYs, and the best ratio an import could reach with this checking."""
    copy_seconds = statistics.median(copy_times)
    floor_seconds = statistics.median(result["seconds"] for result in floors)
    rebuild_seconds = statistics.median(result["timings"]["rebuild"] for result in floors)
    checking_cpu = statistics.median(result["timings"]["checking_cpu"] for result in imports)
    cores = os.cpu_count() or 1
    best_seconds = (checking_cpu + floor_seconds - rebuild_seconds) / cores + rebuild_seconds
    return {
        "floor_copy_seconds": round(copy_seconds, 2),
        "floor_seconds": round(floor_seconds, 2),
        "floor_rebuild_seconds": round(rebuild_seconds, 2),
        "floor_ratio": round(floor_seconds / copy_seconds, 2),
        "checking_cpu_seconds": round(checking_cpu, 2),
        "cores": cores,
        "best_ratio_with_this_checking": round(best_seconds / copy_seconds, 2),
    }


if __name__ == "__main__":
    main()
