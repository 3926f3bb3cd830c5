"""``pec-renewal check`` against the real services, up and down."""

from __future__ import annotations

from click.testing import CliRunner

from tests.support.gateway_servers import PAYPAL_CLIENT, FakePayPal, FakeStripe
from tests.support.settings import TEST_REDIS_URL, TEST_SECRET_KEYS
from worker.cli.main import main

CLOSED_PORT = "1"  # nothing listens on port 1 here


def run_check(tmp_path, database_url, **overrides):
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BROKER_URL": TEST_REDIS_URL,
        **{f"PEC_RENEWAL_{key.upper()}": value for key, value in overrides.items()},
    }
    result = CliRunner().invoke(main, ["check"], env=env)
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in result.output.splitlines()}
    return result.exit_code, lines


def test_everything_up(tmp_path, session_factory, database_url, smtp_server):
    code, lines = run_check(
        tmp_path, database_url, mail_backend="smtp", smtp_host=smtp_server.host, smtp_port=str(smtp_server.port)
    )
    assert code == 0, lines
    assert {service: status for service, (status, _detail) in lines.items()} == {
        "database": "ok",
        "broker": "ok",
        "mail": "ok",
        "gateway": "ok",
        "platform": "ok",
        "webhooks": "ok",
    }
    assert lines["database"][1].startswith("postgresql, revision ")
    assert lines["platform"][1] == (
        "PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: events are kept, not sent (0 pending, 0 failed)"
    )
    assert lines["gateway"][1] == "sandbox, 0 charge(s) recorded"


def test_each_service_down_is_named_and_the_exit_is_non_zero(tmp_path, session_factory, database_url):
    code, lines = run_check(
        tmp_path,
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        broker_url=f"redis://127.0.0.1:{CLOSED_PORT}/0",
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=CLOSED_PORT,
    )
    assert code == 1
    assert [lines[name][0] for name in ("database", "broker", "mail", "gateway")] == ["DOWN"] * 4
    assert lines["mail"][1] == "cannot connect: Connection refused"


def test_stripe_credentials_are_checked_over_http(tmp_path, session_factory, database_url):
    server = FakeStripe().start()
    try:
        good = run_check(
            tmp_path, database_url, payment_gateway="stripe", stripe_api_key="sk_test_local", stripe_api_base=server.url
        )
        bad = run_check(
            tmp_path, database_url, payment_gateway="stripe", stripe_api_key="sk_test_wrong", stripe_api_base=server.url
        )
    finally:
        server.stop()
    assert good[1]["gateway"] == ["ok", "Stripe API key accepted"]
    assert good[0] == 1 and good[1]["webhooks"][0] == "DOWN"  # no webhook secret yet
    assert "PEC_RENEWAL_STRIPE_WEBHOOK_SECRET is not set" in good[1]["webhooks"][1]
    assert bad[0] == 1 and bad[1]["gateway"] == ["DOWN", "Stripe refused the API key"]


def test_paypal_credentials_are_checked_over_http(tmp_path, session_factory, database_url):
    server = FakePayPal().start()
    try:
        good = run_check(
            tmp_path,
            database_url,
            payment_gateway="paypal",
            paypal_client_id=PAYPAL_CLIENT[0],
            paypal_client_secret=PAYPAL_CLIENT[1],
            paypal_api_base=server.url,
        )
        bad = run_check(
            tmp_path,
            database_url,
            payment_gateway="paypal",
            paypal_client_id=PAYPAL_CLIENT[0],
            paypal_client_secret="wrong",
            paypal_api_base=server.url,
        )
    finally:
        server.stop()
    assert good[1]["gateway"] == ["ok", "PayPal client credentials accepted"]
    assert good[1]["webhooks"][0] == "DOWN" and "PAYPAL_WEBHOOK_ID is not set" in good[1]["webhooks"][1]
    assert bad[0] == 1 and bad[1]["gateway"][0] == "DOWN"
    assert "refused the client credentials" in bad[1]["gateway"][1]


def test_the_webhook_secret_and_the_mode_are_checked(tmp_path, session_factory, database_url):
    server = FakeStripe().start()
    try:
        code, lines = run_check(
            tmp_path,
            database_url,
            payment_gateway="stripe",
            stripe_api_key="sk_test_local",
            stripe_api_base=server.url,
            stripe_webhook_secret="whsec_localtestsecret0123456789",
            base_url="https://rinnovi.example.test",
        )
    finally:
        server.stop()
    assert lines["gateway"][0] == lines["webhooks"][0] == "ok"
    assert lines["webhooks"][1] == (
        "Stripe webhook secret set, test mode; endpoint https://rinnovi.example.test/webhooks/stripe"
    )


def test_a_sqlite_file_in_a_missing_folder_is_refused_before_anything_is_created(tmp_path):
    """Not a fresh empty database that check would call up: one line naming the variable, exit 2."""
    missing = tmp_path / "typo"
    result = CliRunner().invoke(
        main,
        ["check"],
        env={
            "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_DATABASE_URL": f"sqlite:///{missing}/pec.sqlite3",
        },
    )
    assert result.exit_code == 2
    assert result.output == (
        f"pec-renewal: PEC_RENEWAL_DATABASE_URL: the folder {missing} does not exist (create it, or correct the path)\n"
    )
    assert not missing.exists()


def test_a_broker_other_than_redis_is_refused_in_one_line(tmp_path, database_url):
    result = CliRunner().invoke(
        main,
        ["check"],
        env={
            "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_DATABASE_URL": database_url,
            "PEC_RENEWAL_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        },
    )
    assert result.exit_code == 2
    assert result.output.startswith("pec-renewal: PEC_RENEWAL_BROKER_URL: must be redis://HOST:PORT/DB")
    assert len(result.output.splitlines()) == 1
