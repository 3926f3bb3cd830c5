"""Benchmark: the day's electronic invoices of N auto-renew charges, written and exported.

    .venv/bin/python bench/invoices.py --mailboxes 20000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_bench

It empties and migrates the benchmark database (its name must contain "bench"),
seeds N auto-renew mailboxes due today, as ``bench/charges.py`` does, whose holders
are private persons with a tax code (their names split into ``Nome`` and ``Cognome``)
and a billing address, and sets the seller settings.  Then:

1. the charges, as ``run-daily`` runs them (``--concurrency`` at a time against the
   sandbox at ``--latency-ms``): each success writes its invoice in the same
   transaction, unnumbered, then numbered by the batch in one transaction;
2. ``invoices export``: every invoice rendered from its stored data, written as
   ``IT{VAT}_{progressive}.xml`` and marked exported, ``EXPORT_BATCH`` per transaction;
3. the baseline, in the same run: the same invoice rows read in one query and
   serialised with a plain string template, with no checks (no Latin-1 cleaning, no
   buyer data checked, no marking), written to another folder.

It checks that every charge has its invoice, the numbers are 1 to N with no gap,
one file per invoice, and ``--validate`` files (spread over the run) against the
official schema in ``tests/fatturapa/``.  The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/charges.py, bench/databases.py

import psycopg
from charges import reset_database, seed
from databases import psycopg_url
from sqlalchemy import select

from config.settings import Settings
from tests.support import fatturapa
from worker.rules import einvoice
from worker.services.daily import charge_day, scan_day
from worker.services.invoices.export import export_invoices
from worker.services.runtime import Runtime
from worker.store.models import Invoice

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_bench"
SELLER = {
    "SELLER_NAME": "Provider PEC S.p.A.",
    "SELLER_VAT_NUMBER": "01234560017",
    "SELLER_ADDRESS": "Via Roma 1",
    "SELLER_POSTCODE": "00184",
    "SELLER_CITY": "Roma",
    "SELLER_PROVINCE": "RM",
}

#: The baseline's document: the same elements as the export's, filled by str.format, nothing checked.
BASELINE = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<p:FatturaElettronica xmlns:p="{ns}" versione="FPR12"><FatturaElettronicaHeader><DatiTrasmissione>'
    "<IdTrasmittente><IdPaese>IT</IdPaese><IdCodice>{vat}</IdCodice></IdTrasmittente>"
    "<ProgressivoInvio>{progressive}</ProgressivoInvio><FormatoTrasmissione>FPR12</FormatoTrasmissione>"
    "<CodiceDestinatario>0000000</CodiceDestinatario></DatiTrasmissione><CedentePrestatore><DatiAnagrafici>"
    "<IdFiscaleIVA><IdPaese>IT</IdPaese><IdCodice>{vat}</IdCodice></IdFiscaleIVA><Anagrafica><Denominazione>"
    "{seller}</Denominazione></Anagrafica><RegimeFiscale>RF01</RegimeFiscale></DatiAnagrafici><Sede><Indirizzo>"
    "Via Roma 1</Indirizzo><CAP>00184</CAP><Comune>Roma</Comune><Provincia>RM</Provincia><Nazione>IT</Nazione>"
    "</Sede></CedentePrestatore><CessionarioCommittente><DatiAnagrafici><CodiceFiscale>{tax_code}</CodiceFiscale>"
    "<Anagrafica><Nome>{first_name}</Nome><Cognome>{last_name}</Cognome></Anagrafica></DatiAnagrafici><Sede><Indirizzo>{street}"
    "</Indirizzo><CAP>{postcode}</CAP><Comune>{city}</Comune><Nazione>IT</Nazione></Sede></CessionarioCommittente>"
    "</FatturaElettronicaHeader><FatturaElettronicaBody><DatiGenerali><DatiGeneraliDocumento><TipoDocumento>TD01"
    "</TipoDocumento><Divisa>EUR</Divisa><Data>{day}</Data><Numero>{number}</Numero><ImportoTotaleDocumento>"
    "{total}</ImportoTotaleDocumento></DatiGeneraliDocumento></DatiGenerali><DatiBeniServizi>{lines}"
    "<DatiRiepilogo><AliquotaIVA>22.00</AliquotaIVA><ImponibileImporto>{subtotal}</ImponibileImporto><Imposta>"
    "{vat_amount}</Imposta><EsigibilitaIVA>I</EsigibilitaIVA></DatiRiepilogo></DatiBeniServizi><DatiPagamento>"
    "<CondizioniPagamento>TP02</CondizioniPagamento><DettaglioPagamento><ModalitaPagamento>MP08</ModalitaPagamento>"
    "<ImportoPagamento>{total}</ImportoPagamento></DettaglioPagamento></DatiPagamento></FatturaElettronicaBody>"
    "</p:FatturaElettronica>"
)
BASELINE_LINE = (
    "<DettaglioLinee><NumeroLinea>{index}</NumeroLinea><Descrizione>{description}</Descrizione><Quantita>"
    "{quantity}.00</Quantita><PrezzoUnitario>{unit}</PrezzoUnitario><PrezzoTotale>{amount}</PrezzoTotale>"
    "<AliquotaIVA>22.00</AliquotaIVA></DettaglioLinee>"
)


def give_billing_data(url: str) -> None:
    """Every holder a private person, Mario Rossi, with his tax code and an address in Milan (the name
    the tax code's letters split into Nome and Cognome)."""
    with psycopg.connect(psycopg_url(url)) as connection:
        connection.execute(
            "UPDATE holders SET name = 'Mario Rossi', kind = 'private', vat_number = NULL, "
            "tax_code = 'RSSMRA80A01H501U', billing_address = 'Via Garibaldi ' || id, "
            "billing_postcode = '20121', billing_city = 'Milano', billing_province = 'MI', billing_country = 'IT'"
        )


def _euro(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def baseline(runtime: Runtime, out_dir: Path) -> int:
    """The same invoices read in one query and serialised by str.format, nothing checked nor marked."""
    with runtime.engine.connect() as connection:
        rows = connection.execute(select(Invoice.__table__).order_by(Invoice.id)).all()
    for row in rows:
        progressive = einvoice.progressive(row.id)
        buyer, address = row.buyer, row.buyer["address"]
        lines = "".join(
            BASELINE_LINE.format(
                index=index,
                description=line["description"],
                quantity=line["quantity"],
                unit=_euro(line["unit_cents"]),
                amount=_euro(line["amount_cents"]),
            )
            for index, line in enumerate(row.lines, start=1)
        )
        xml = BASELINE.format(
            ns=einvoice.NAMESPACE,
            vat=SELLER["SELLER_VAT_NUMBER"],
            progressive=progressive,
            seller=SELLER["SELLER_NAME"],
            tax_code=buyer["tax_code"],
            first_name=buyer["name"].split(" ", 1)[0],
            last_name=buyer["name"].split(" ", 1)[1],
            street=address["street"],
            postcode=address["postcode"],
            city=address["city"],
            day=row.issued_on.isoformat(),
            number=row.document_number,
            total=_euro(row.paid_cents),
            lines=lines,
            subtotal=_euro(row.subtotal_cents),
            vat_amount=_euro(row.vat_cents),
        )
        (out_dir / f"IT{SELLER['SELLER_VAT_NUMBER']}_{progressive}.xml").write_text(xml, encoding="utf-8")
    return len(rows)


def check_numbers(url: str) -> dict:
    with psycopg.connect(psycopg_url(url)) as connection:
        count, lowest, highest, distinct = connection.execute(
            "SELECT count(*), min(number), max(number), count(DISTINCT number) FROM invoices WHERE status = 'issued'"
        ).fetchone()
        waiting = connection.execute("SELECT count(*) FROM invoices WHERE status = 'waiting'").fetchone()[0]
        succeeded = connection.execute("SELECT count(*) FROM charge_intents WHERE status = 'succeeded'").fetchone()[0]
    return {
        "invoices": count,
        "invoices_waiting": waiting,
        "charges_succeeded": succeeded,
        "numbers_gapless": count == distinct and (count == 0 or (lowest == 1 and highest == count)),
    }


def validate_sample(out_dir: Path, names: list[str], count: int) -> int:
    """Validate ``count`` files spread over ``names`` against the official schema; the number validated."""
    if count <= 0 or not names:
        return 0
    step = max(1, len(names) // count)
    sample = names[::step][:count]
    for name in sample:
        fatturapa.validate((out_dir / name).read_bytes())
    return len(sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=int, default=0, help="the sandbox's latency per charge")
    parser.add_argument("--concurrency", type=int, default=32, help="GATEWAY_CONCURRENCY")
    parser.add_argument("--validate", type=int, default=50, help="exported files validated against the schema")
    parser.add_argument("--database-url", default=os.environ.get("PEC_RENEWAL_BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)

    expires_on = date(2027, 3, 31)
    today = expires_on - timedelta(days=7)
    reset_database(args.database_url)
    seed_seconds = seed(args.database_url, args.mailboxes, expires_on, today, "pm_card_visa")
    give_billing_data(args.database_url)
    print(f"seeded {args.mailboxes} auto-renew mailboxes in {seed_seconds:.1f}s", file=sys.stderr)

    settings = Settings.from_env(
        {
            "PEC_RENEWAL_DATABASE_URL": args.database_url,
            "PEC_RENEWAL_SANDBOX_LATENCY_MS": str(args.latency_ms),
            "PEC_RENEWAL_GATEWAY_CONCURRENCY": str(args.concurrency),
            "PEC_RENEWAL_SECRET_KEYS": "bench-key-0123456789abcdef0123456789abcdef",
            "PEC_RENEWAL_VAR_DIR": os.environ.get("PEC_RENEWAL_VAR_DIR", "/tmp/pec-renewal-bench"),
            **{f"PEC_RENEWAL_{name}": value for name, value in SELLER.items()},
        }
    )
    runtime = Runtime(settings)
    folder = Path(tempfile.mkdtemp(prefix="pec-invoices-bench-"))
    try:
        scan = scan_day(runtime, today)
        started = time.perf_counter()
        charged = charge_day(runtime, today, scan.charges_due)
        charge_seconds = time.perf_counter() - started
        print(f"charges and their invoices: {charged.charges} in {charge_seconds:.1f}s", file=sys.stderr)

        started = time.perf_counter()
        exported = export_invoices(
            runtime.engine,
            settings.seller,
            since=today,
            out_dir=folder / "export",
            today=today,
            now=datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=20),
        )
        export_seconds = time.perf_counter() - started
        print(f"export: {len(exported.written)} files in {export_seconds:.1f}s", file=sys.stderr)

        (folder / "baseline").mkdir()
        started = time.perf_counter()
        serialised = baseline(runtime, folder / "baseline")
        baseline_seconds = time.perf_counter() - started
        print(f"baseline: {serialised} files in {baseline_seconds:.1f}s", file=sys.stderr)

        validated = validate_sample(folder / "export", sorted(exported.written), args.validate)
        files = len(list((folder / "export").iterdir()))
    finally:
        runtime.close()
        shutil.rmtree(folder, ignore_errors=True)

    record = check_numbers(args.database_url)
    written = len(exported.written)
    summary = {
        "mailboxes": args.mailboxes,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "seed_seconds": round(seed_seconds, 2),
        "charge_seconds": round(charge_seconds, 2),
        "charges_per_second": round(charged.charges / charge_seconds, 1) if charge_seconds else None,
        "export_seconds": round(export_seconds, 2),
        "exported_per_second": round(written / export_seconds, 1) if export_seconds else None,
        "baseline_seconds": round(baseline_seconds, 2),
        "baseline_per_second": round(serialised / baseline_seconds, 1) if baseline_seconds else None,
        "export_to_baseline": round(export_seconds / baseline_seconds, 2) if baseline_seconds else None,
        "files_written": written,
        "files_on_disk": files,
        "files_validated": validated,
        "charge_errors": charged.errors,
        **record,
    }
    print(json.dumps(summary, sort_keys=True))
    ok = (
        record["numbers_gapless"]
        and record["invoices"] == record["charges_succeeded"] == args.mailboxes == written == files
        and charged.errors == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
