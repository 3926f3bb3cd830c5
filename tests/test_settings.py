"""Settings from the environment: defaults, parsing, and one clear line per bad value.  No database."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import config.settings as settings_module
from config.settings import Settings, SettingsError
from worker.rules.schedule import DEFAULT_STAGES, Stage

OLD_KEY = "old-key-0123456789abcdef0123456789abcdef"
NEW_KEY = "new-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def var_dir(tmp_path) -> Path:
    return tmp_path / "var"


def read(var_dir: Path, **values: str) -> Settings:
    """Settings from an environment holding only VAR_DIR and ``values`` (names without the prefix)."""
    environ = {"PEC_RENEWAL_VAR_DIR": str(var_dir)}
    environ.update({f"PEC_RENEWAL_{name}": value for name, value in values.items()})
    return Settings.from_env(environ)


def read_keyed(var_dir: Path, **values: str) -> Settings:
    """The same, with secret keys set, so no key file is generated."""
    return read(var_dir, SECRET_KEYS=f"{OLD_KEY},{NEW_KEY}", **values)


# -- the embedded default ------------------------------------------------------------------------


def test_defaults_with_an_empty_environment(var_dir, caplog):
    caplog.set_level(logging.WARNING, logger="config.settings")
    settings = read(var_dir)
    var = var_dir.resolve()
    key = (var / "secret_key").read_text()

    assert settings.var_dir == var
    assert settings.database_url == f"sqlite:///{var}/pec-renewal.sqlite3"
    assert settings.is_embedded is True
    assert settings.broker_url == "filesystem://"
    assert settings.broker_transport_options == {
        "data_folder_in": str(var / "broker" / "queue"),
        "data_folder_out": str(var / "broker" / "queue"),
        "processed_folder": str(var / "broker" / "processed"),
        "store_processed": False,
    }
    assert settings.mail_backend == "maildir"
    assert settings.maildir == var / "mail"
    assert settings.smtp_host == "localhost"
    assert settings.smtp_port == 25
    assert settings.smtp_user is None
    assert settings.smtp_password is None
    assert settings.smtp_tls == "none"
    assert settings.smtp_timeout == 30.0
    assert settings.mail_from == "Rinnovi PEC <rinnovi@localhost>"
    assert key.endswith("\n") and len(key.strip()) == 64
    assert settings.secret_keys == (key.strip(),)
    assert settings.secret_key_generated is True
    assert settings.base_url == "http://127.0.0.1:5000"
    assert settings.timezone == ZoneInfo("Europe/Rome")
    assert settings.payment_gateway == "sandbox"
    assert settings.notice_stages == DEFAULT_STAGES
    assert settings.scan_batch_size == 500
    assert settings.daily_scan_at == (6, 0)
    assert settings.link_max_age_days == 200
    assert settings.outbox_max_attempts == 12
    assert settings.relay_batch_size == 200
    assert settings.base_url_explicit is False
    assert settings.charge_reconcile_after_minutes == 5
    assert caplog.records == []  # reading says nothing: the warning is where the key signs


def test_the_generated_key_is_warned_about_once_per_process_where_it_signs(var_dir, caplog, monkeypatch):
    monkeypatch.setattr(settings_module, "_warned_key_files", set())
    caplog.set_level(logging.WARNING, logger="config.settings")
    settings = read(var_dir)
    settings_module.warn_generated_secret_key(settings)
    settings_module.warn_generated_secret_key(read(var_dir))  # a second reader in the same process
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        (
            "WARNING",
            f"PEC_RENEWAL_SECRET_KEYS is not set: using the generated key in {var_dir.resolve() / 'secret_key'}"
            " (set it in production)",
        )
    ]
    settings_module.warn_generated_secret_key(read_keyed(var_dir / "other"))  # keys set: nothing to say
    assert len(caplog.records) == 1


def test_generated_secret_is_private_and_reused(var_dir, caplog):
    caplog.set_level(logging.WARNING, logger="config.settings")
    first = read(var_dir)
    path = var_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = read(var_dir)
    assert second.secret_keys == first.secret_keys
    assert second.secret_key_generated is True
    assert sorted(os.listdir(var_dir)) == ["secret_key"]  # no temporary file left behind
    assert caplog.records == []


def test_generated_secret_loses_the_race_to_another_process(var_dir, monkeypatch):
    """Another process links its key between our check and our link: we use its key."""
    theirs = "their-key-0123456789abcdef0123456789abcdef"
    real_link = os.link

    def link_after_the_other_process(source, destination):
        other = var_dir / "other-process.tmp"
        other.write_text(theirs + "\n")
        real_link(other, destination)
        other.unlink()
        return real_link(source, destination)  # raises FileExistsError

    monkeypatch.setattr(settings_module.os, "link", link_after_the_other_process)
    settings = read(var_dir)
    assert settings.secret_keys == (theirs,)
    assert sorted(os.listdir(var_dir)) == ["secret_key"]


def test_generated_secret_is_the_same_for_concurrent_readers(var_dir):
    start = threading.Barrier(8)
    keys: list[tuple[str, ...]] = []
    errors: list[BaseException] = []

    def reader():
        start.wait()
        try:
            keys.append(read(var_dir).secret_keys)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(keys) == 8
    assert set(keys) == {((var_dir / "secret_key").read_text().strip(),)}
    assert sorted(os.listdir(var_dir)) == ["secret_key"]


def test_unusable_secret_file_is_a_clear_error(var_dir):
    var_dir.mkdir()
    (var_dir / "secret_key").write_text("\n")
    with pytest.raises(SettingsError) as caught:
        read(var_dir)
    assert str(caught.value) == (
        f"PEC_RENEWAL_SECRET_KEYS: is not set and {var_dir.resolve() / 'secret_key'} holds no usable key; "
        "delete it to make a new one"
    )


def test_var_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    var_dir = tmp_path / "a-file" / "var"
    with pytest.raises(SettingsError) as caught:
        read(var_dir)
    assert (
        str(caught.value)
        == f"PEC_RENEWAL_SECRET_KEYS: is not set and {var_dir / 'secret_key'} cannot be used: Not a directory"
    )


def test_set_secret_keys_generate_nothing(var_dir):
    settings = read(var_dir, SECRET_KEYS=f" {OLD_KEY} , {NEW_KEY} ,")
    assert settings.secret_keys == (OLD_KEY, NEW_KEY)
    assert settings.secret_key_generated is False
    assert not (var_dir / "secret_key").exists()


# -- parsing every setting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "attribute", "expected"),
    [
        (
            {"DATABASE_URL": "postgresql://pec:pw@db.example:5432/pec"},
            "database_url",
            "postgresql+psycopg://pec:pw@db.example:5432/pec",
        ),
        ({"DATABASE_URL": "postgresql+psycopg://pec@db/pec"}, "database_url", "postgresql+psycopg://pec@db/pec"),
        ({"DATABASE_URL": "sqlite:////tmp/db.sqlite3"}, "database_url", "sqlite:////tmp/db.sqlite3"),
        ({"DATABASE_URL": "postgresql://pec@db/pec"}, "is_embedded", False),
        ({"DATABASE_URL": "sqlite:////tmp/db.sqlite3"}, "is_embedded", True),
        ({"DATABASE_URL": "sqlite://"}, "database_url", "sqlite://"),
        ({"DATABASE_URL": "sqlite:///:memory:"}, "database_url", "sqlite:///:memory:"),
        ({"BASE_URL": "https://rinnovi.example.it"}, "base_url_explicit", True),
        ({"CHARGE_RECONCILE_AFTER_MINUTES": "15"}, "charge_reconcile_after_minutes", 15),
        ({"BROKER_URL": "redis://redis.example:6379/0"}, "broker_url", "redis://redis.example:6379/0"),
        ({"BROKER_URL": "redis://redis.example:6379/0"}, "broker_transport_options", {"visibility_timeout": 3600}),
        ({"BROKER_URL": "rediss://:pw@redis.example:6380/1"}, "broker_url", "rediss://:pw@redis.example:6380/1"),
        ({"MAIL_BACKEND": "smtp"}, "mail_backend", "smtp"),
        ({"MAIL_BACKEND": "Console"}, "mail_backend", "console"),
        ({"MAILDIR": "/srv/pec/mail"}, "maildir", Path("/srv/pec/mail")),
        ({"SMTP_HOST": "smtp.example.it"}, "smtp_host", "smtp.example.it"),
        ({"SMTP_PORT": "2525"}, "smtp_port", 2525),
        ({"SMTP_TLS": "ssl"}, "smtp_port", 465),
        ({"SMTP_TLS": "STARTTLS"}, "smtp_port", 587),
        ({"SMTP_TLS": "starttls"}, "smtp_tls", "starttls"),
        ({"SMTP_TLS": "ssl", "SMTP_PORT": "10465"}, "smtp_port", 10465),
        ({"SMTP_USER": "relay-user"}, "smtp_user", "relay-user"),
        ({"SMTP_PASSWORD": "relay-password"}, "smtp_password", "relay-password"),
        ({"SMTP_TIMEOUT": "2.5"}, "smtp_timeout", 2.5),
        ({"MAIL_FROM": "Rinnovi <rinnovi@pec.example.it>"}, "mail_from", "Rinnovi <rinnovi@pec.example.it>"),
        ({"MAIL_FROM": "rinnovi@pec.example.it"}, "mail_from", "rinnovi@pec.example.it"),
        ({"BASE_URL": "https://rinnovi.example.it/"}, "base_url", "https://rinnovi.example.it"),
        ({"BASE_URL": "https://example.it:8443/pec/"}, "base_url", "https://example.it:8443/pec"),
        ({"TIMEZONE": "UTC"}, "timezone", ZoneInfo("UTC")),
        ({"TIMEZONE": "Europe/Rome"}, "timezone", ZoneInfo("Europe/Rome")),
        ({"PAYMENT_GATEWAY": "Stripe", "STRIPE_API_KEY": "sk_test_123"}, "payment_gateway", "stripe"),
        (
            {"PAYMENT_GATEWAY": "paypal", "PAYPAL_CLIENT_ID": "id", "PAYPAL_CLIENT_SECRET": "secret"},
            "payment_gateway",
            "paypal",
        ),
        ({"SANDBOX_LATENCY_MS": "300"}, "sandbox_latency_ms", 300),
        ({"CHARGE_DAYS": "10, 2"}, "charge_days", (10, 2)),
        ({"CHARGE_NOTICE_DAYS": "45"}, "charge_notice_days", 45),
        ({"STRIPE_API_BASE": "http://127.0.0.1:8111/"}, "stripe_api_base", "http://127.0.0.1:8111"),
        ({"BANK_IBAN": "it60 x054 2811 1010 0000 0123 456"}, "bank_iban", "IT60X0542811101000000123456"),
        (
            {"NOTICE_STAGES": "-1m, -7d, 0d, +30d"},
            "notice_stages",
            (Stage(months=-1), Stage(days=-7), Stage(), Stage(days=30)),
        ),
        ({"DAILY_SCAN_AT": "23:59"}, "daily_scan_at", (23, 59)),
        ({"DAILY_SCAN_AT": "7:05"}, "daily_scan_at", (7, 5)),
        ({"DAILY_SCAN_AT": "00:00"}, "daily_scan_at", (0, 0)),
        ({"SCAN_BATCH_SIZE": "1000"}, "scan_batch_size", 1000),
        ({"SCAN_BATCH_SIZE": "1"}, "scan_batch_size", 1),
        ({"LINK_MAX_AGE_DAYS": "365"}, "link_max_age_days", 365),
        ({"OUTBOX_MAX_ATTEMPTS": "3"}, "outbox_max_attempts", 3),
        ({"RELAY_BATCH_SIZE": "50"}, "relay_batch_size", 50),
        ({"API_TOKEN": "a" * 32}, "api_token", "a" * 32),
        ({}, "api_token", None),
        # Blank is the same as unset (except for SECRET_KEYS).
        ({"TIMEZONE": "   "}, "timezone", ZoneInfo("Europe/Rome")),
        ({"SMTP_PORT": ""}, "smtp_port", 25),
        ({"NOTICE_STAGES": ""}, "notice_stages", DEFAULT_STAGES),
        # Surrounding blanks are dropped.
        ({"SMTP_HOST": "  smtp.example.it \n"}, "smtp_host", "smtp.example.it"),
    ],
)
def test_each_setting_is_parsed(var_dir, values, attribute, expected):
    assert getattr(read_keyed(var_dir, **values), attribute) == expected


def test_a_sqlite_database_in_a_folder_that_does_not_exist_is_refused(tmp_path):
    """A typo in the path would otherwise give a new, empty database (and 'check' would call it up)."""
    missing = tmp_path / "no-such-folder"
    for url in (f"sqlite:///{missing}/pec.sqlite3", f"sqlite:///{missing}/deeper/pec.sqlite3?timeout=5"):
        with pytest.raises(SettingsError) as caught:
            read_keyed(tmp_path / "var", DATABASE_URL=url)
        assert str(caught.value).startswith(f"PEC_RENEWAL_DATABASE_URL: the folder {missing}")
        assert str(caught.value).endswith(" does not exist (create it, or correct the path)")
        assert "\n" not in str(caught.value)
    assert not missing.exists()
    with pytest.raises(SettingsError) as caught:
        read_keyed(tmp_path / "var", DATABASE_URL=f"sqlite:///{tmp_path}")
    assert str(caught.value) == f"PEC_RENEWAL_DATABASE_URL: {tmp_path} is a folder, not a database file"


def test_the_embedded_default_and_a_file_under_var_dir_may_create_their_folder(tmp_path):
    var_dir = tmp_path / "fresh" / "var"  # nothing exists yet
    assert read_keyed(var_dir).database_url == f"sqlite:///{var_dir}/pec-renewal.sqlite3"
    named = read_keyed(var_dir, DATABASE_URL=f"sqlite:///{var_dir}/other.sqlite3")
    assert named.database_url == f"sqlite:///{var_dir}/other.sqlite3"
    (tmp_path / "here").mkdir()
    assert read_keyed(var_dir, DATABASE_URL=f"sqlite:///{tmp_path}/here/pec.sqlite3").is_embedded


def test_relative_paths_resolve_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env(
        {"PEC_RENEWAL_VAR_DIR": "state", "PEC_RENEWAL_MAILDIR": "outgoing", "PEC_RENEWAL_SECRET_KEYS": NEW_KEY}
    )
    assert settings.var_dir == tmp_path.resolve() / "state"
    assert settings.maildir == tmp_path.resolve() / "outgoing"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/state/pec-renewal.sqlite3"


def test_variables_without_the_prefix_are_ignored(var_dir):
    settings = Settings.from_env(
        {"PEC_RENEWAL_VAR_DIR": str(var_dir), "PEC_RENEWAL_SECRET_KEYS": NEW_KEY, "TIMEZONE": "Mars/Olympus"}
    )
    assert settings.timezone == ZoneInfo("Europe/Rome")


def test_from_env_reads_the_process_environment(var_dir, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PEC_RENEWAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PEC_RENEWAL_VAR_DIR", str(var_dir))
    monkeypatch.setenv("PEC_RENEWAL_SECRET_KEYS", NEW_KEY)
    monkeypatch.setenv("PEC_RENEWAL_SCAN_BATCH_SIZE", "42")
    assert Settings.from_env().scan_batch_size == 42


# -- bad values: one line, naming the variable -----------------------------------------------------

TOO_SHORT = "x" * 31

BROKER_MESSAGE = "must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB (or filesystem:// for the embedded default); other Celery brokers are not supported"

BAD_VALUES = [
    ("SANDBOX_LATENCY_MS", "-1", "-1 is outside 0..60000"),
    ("BANK_IBAN", "12345", "'12345' is not an IBAN"),
    ("CHARGE_DAYS", "7,x", "'7,x' is not a list of days such as 7,5,3,1"),
    ("CHARGE_DAYS", "3,5", "'3,5': days before expiry, from 60 to 1, each fewer than the one before"),
    ("CHARGE_DAYS", "7,7,1", "'7,7,1': days before expiry, from 60 to 1, each fewer than the one before"),
    ("CHARGE_DAYS", "0", "'0': days before expiry, from 60 to 1, each fewer than the one before"),
    ("CHARGE_NOTICE_DAYS", "7", "7 must be more than the charge's 7 days before expiry"),
    ("POSTAL_ACCOUNT", "12-34", "'12-34' is not a postal current account number (8 to 12 digits)"),
    ("PAYPAL_API_BASE", "ftp://paypal", "'ftp://paypal' is not an http(s) URL"),
    ("TIMEZONE", "Mars/Olympus", "'Mars/Olympus' is not a known time zone (such as Europe/Rome)"),
    ("TIMEZONE", "Europe", "'Europe' is not a known time zone (such as Europe/Rome)"),
    ("TIMEZONE", "../etc/passwd", "'../etc/passwd' is not a known time zone (such as Europe/Rome)"),
    ("TIMEZONE", "/etc/localtime", "'/etc/localtime' is not a known time zone (such as Europe/Rome)"),
    ("TIMEZONE", "zone1970.tab", "'zone1970.tab' is not a known time zone (such as Europe/Rome)"),
    ("MAIL_BACKEND", "sendmail", "'sendmail' is not one of maildir, smtp, console"),
    ("SMTP_TLS", "tls", "'tls' is not one of none, starttls, ssl"),
    ("SMTP_PORT", "smtp", "'smtp' is not a whole number"),
    ("SMTP_PORT", "25.0", "'25.0' is not a whole number"),
    ("SMTP_PORT", "0", "0 is outside 1..65535"),
    ("SMTP_PORT", "65536", "65536 is outside 1..65535"),
    ("SMTP_TIMEOUT", "soon", "'soon' is not a number"),
    ("SMTP_TIMEOUT", "0", "'0' must be a number greater than 0"),
    ("SMTP_TIMEOUT", "nan", "'nan' must be a number greater than 0"),
    ("SMTP_TIMEOUT", "inf", "'inf' must be a number greater than 0"),
    ("DATABASE_URL", "mysql://pec@db/pec", "must start with sqlite:// or postgresql+psycopg://"),
    ("DATABASE_URL", "postgres://pec@db/pec", "must start with sqlite:// or postgresql+psycopg://"),
    ("DATABASE_URL", "db.sqlite3", "must start with sqlite:// or postgresql+psycopg://"),
    ("BROKER_URL", "http://redis.example", BROKER_MESSAGE),
    ("BROKER_URL", "filesystemx://", BROKER_MESSAGE),
    # Celery speaks these, but the worker's guarantees (redelivery of a dead worker's tasks before
    # the visibility timeout, the task time limit under it) are built and tested on Redis only.
    ("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//", BROKER_MESSAGE),
    ("BROKER_URL", "pyamqp://guest@rabbit.example//", BROKER_MESSAGE),
    ("BROKER_URL", "sqla+postgresql://pec@db/pec", BROKER_MESSAGE),
    ("CHARGE_RECONCILE_AFTER_MINUTES", "1", "1 is outside 2..720"),
    ("CHARGE_RECONCILE_AFTER_MINUTES", "five", "'five' is not a whole number"),
    ("BROKER_URL", "redis://redis example/0", "must not hold spaces or control characters"),
    ("MAIL_FROM", "rinnovi", "'rinnovi' is not an address like 'Rinnovi PEC <rinnovi@example.it>'"),
    ("MAIL_FROM", "Rinnovi PEC", "'Rinnovi PEC' is not an address like 'Rinnovi PEC <rinnovi@example.it>'"),
    (
        "MAIL_FROM",
        "rinnovi@example.it\r\nBcc: victim@example.org",
        "'rinnovi@example.it\\r\\nBcc: victim@example.org' is not an address like 'Rinnovi PEC <rinnovi@example.it>'",
    ),
    (
        "MAIL_FROM",
        "Rinnovi <rinnovi@example.it>\nX-Evil: 1",
        "'Rinnovi <rinnovi@example.it>\\nX-Evil: 1' is not an address like 'Rinnovi PEC <rinnovi@example.it>'",
    ),
    (
        "MAIL_FROM",
        "Rinnovi\r <rinnovi@example.it>",
        "'Rinnovi\\r <rinnovi@example.it>' is not an address like 'Rinnovi PEC <rinnovi@example.it>'",
    ),
    ("SECRET_KEYS", "", "is set but holds no key (unset it to use a generated key under var/)"),
    ("SECRET_KEYS", " , ,", "is set but holds no key (unset it to use a generated key under var/)"),
    ("SECRET_KEYS", TOO_SHORT, "key number 1 is shorter than 32 characters"),
    ("SECRET_KEYS", f"{OLD_KEY},{TOO_SHORT}", "key number 2 is shorter than 32 characters"),
    (
        "BASE_URL",
        "ftp://rinnovi.example.it",
        "'ftp://rinnovi.example.it' is not an http(s) URL such as https://rinnovi.example.it",
    ),
    ("BASE_URL", "rinnovi.example.it", "'rinnovi.example.it' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "https://", "'https:' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "https://x.it/?a=1", "'https://x.it/?a=1' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "https://x.it/#top", "'https://x.it/#top' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "http://[::1", "'http://[::1' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "http://x.it:99999", "'http://x.it:99999' is not an http(s) URL such as https://rinnovi.example.it"),
    ("BASE_URL", "http://x .it", "'http://x .it' is not an http(s) URL such as https://rinnovi.example.it"),
    ("PAYMENT_GATEWAY", "bank", "'bank' is not one of sandbox, stripe, paypal"),
    ("NOTICE_STAGES", "-3m,3d", "'3d' needs a sign: -3d (before expiry) or +3d (after)"),
    ("NOTICE_STAGES", "-1m,+91d", "stage +91d falls after deletion (+90d is the last day)"),
    ("NOTICE_STAGES", "-7d,-7d", "stage -7d is listed twice"),
    ("NOTICE_STAGES", "-4m", "stage -4m is earlier than the 3-month notice window"),
    ("NOTICE_STAGES", "+1m", "stage +1m: give stages after expiry in days, such as +30d"),
    (
        "NOTICE_STAGES",
        "-1m,-30d",
        "stages -30d and -1m can fall on the same date (-1m is 28 to 31 days before expiry): move -30d outside -31d..-28d",
    ),
    ("NOTICE_STAGES", ",", "the schedule is empty"),
    ("NOTICE_STAGES", "-1m\n+1d", "'-1m\\n+1d' is not a stage such as -3m, -15d, 0d or +30d"),
    ("DAILY_SCAN_AT", "6", "'6' is not a time of day such as 06:00"),
    ("DAILY_SCAN_AT", "24:00", "'24:00' is not a time of day such as 06:00"),
    ("DAILY_SCAN_AT", "06:60", "'06:60' is not a time of day such as 06:00"),
    ("DAILY_SCAN_AT", "6am", "'6am' is not a time of day such as 06:00"),
    ("SCAN_BATCH_SIZE", "0", "0 is outside 1..100000"),
    ("SCAN_BATCH_SIZE", "100001", "100001 is outside 1..100000"),
    ("SCAN_BATCH_SIZE", "many", "'many' is not a whole number"),
    ("SCAN_BATCH_SIZE", "1.5", "'1.5' is not a whole number"),
    ("LINK_MAX_AGE_DAYS", "0", "0 is outside 184..3650"),
    ("LINK_MAX_AGE_DAYS", "183", "183 is outside 184..3650"),
    ("OUTBOX_MAX_ATTEMPTS", "101", "101 is outside 1..100"),
    ("RELAY_BATCH_SIZE", "-1", "-1 is outside 1..10000"),
    ("TERMS_URL", "condizioni.pdf", "'condizioni.pdf' is not an http(s) URL such as https://www.example.it/condizioni"),
    (
        "MANUAL_URL",
        "ftp://x.it/m.pdf",
        "'ftp://x.it/m.pdf' is not an http(s) URL such as https://www.example.it/condizioni",
    ),
    ("SUPPORT_URL", "https://x .it", "'https://x .it' is not an http(s) URL such as https://www.example.it/condizioni"),
    ("UNFAIR_TERMS_CLAUSES", " ; ;", "must name 1 to 30 clauses, separated by ';'"),
    (
        "UNFAIR_TERMS_CLAUSES",
        "art. 1;" + "x" * 201,
        f"{'x' * 40!r}…: each clause is one line of at most 200 characters",
    ),
    ("API_TOKEN", "x" * 31, "must be at least 32 characters, without spaces"),
    ("API_TOKEN", "x" * 20 + " " + "x" * 20, "must be at least 32 characters, without spaces"),
]


@pytest.mark.parametrize(("name", "value", "problem"), BAD_VALUES)
def test_bad_value_is_one_line_naming_the_variable(var_dir, name, value, problem):
    values = {"SECRET_KEYS": NEW_KEY, name: value}
    with pytest.raises(SettingsError) as caught:
        read(var_dir, **values)
    message = str(caught.value)
    assert message == f"PEC_RENEWAL_{name}: {problem}"
    assert "\n" not in message and "\r" not in message
    assert caught.value.variable == f"PEC_RENEWAL_{name}"
    assert caught.value.problem == problem
    # No chained traceback to print: the line is the whole story.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_every_required_variable_has_a_bad_value_case():
    covered = {name for name, _, _ in BAD_VALUES}
    assert covered >= {
        "TIMEZONE",
        "MAIL_BACKEND",
        "SMTP_TLS",
        "SMTP_PORT",
        "DATABASE_URL",
        "BROKER_URL",
        "MAIL_FROM",
        "SECRET_KEYS",
        "BASE_URL",
        "PAYMENT_GATEWAY",
        "NOTICE_STAGES",
        "DAILY_SCAN_AT",
        "SCAN_BATCH_SIZE",
        "TERMS_URL",
        "MANUAL_URL",
        "SUPPORT_URL",
        "UNFAIR_TERMS_CLAUSES",
    }


def test_the_contract_pages_and_the_clauses(var_dir):
    default = read_keyed(var_dir)
    assert default.terms_url.startswith("https://") and default.support_url.startswith("https://")
    assert len(default.unfair_terms_clauses) == 6 and all("art." in clause for clause in default.unfair_terms_clauses)
    chosen = read_keyed(
        var_dir,
        TERMS_URL="https://www.example.it/cgc.pdf?v=2#art5",
        MANUAL_URL="http://www.example.it/manuale.pdf",
        SUPPORT_URL="https://assistenza.example.it/",
        UNFAIR_TERMS_CLAUSES=" art. 3 (Durata);  art. 9   (Foro competente) ;",
    )
    assert chosen.terms_url == "https://www.example.it/cgc.pdf?v=2#art5"
    assert (chosen.manual_url, chosen.support_url) == (
        "http://www.example.it/manuale.pdf",
        "https://assistenza.example.it/",
    )
    assert chosen.unfair_terms_clauses == ("art. 3 (Durata)", "art. 9 (Foro competente)")


# -- secrets stay out of repr --------------------------------------------------------------------


def test_secrets_never_appear_in_repr(var_dir):
    settings = read(
        var_dir,
        SECRET_KEYS=f"{OLD_KEY},{NEW_KEY}",
        SMTP_PASSWORD="smtp-password-s3cr3t",
        API_TOKEN="renewal-api-token-s3cr3t-0123456789abcdef",
        DATABASE_URL="postgresql://pec:db-password-s3cr3t@db.example:5432/pec",
        BROKER_URL="redis://:broker-password-s3cr3t@redis.example:6379/0",
    )
    for text in (repr(settings), str(settings), f"{settings!r}"):
        assert OLD_KEY not in text
        assert NEW_KEY not in text
        assert "smtp-password-s3cr3t" not in text
        assert "db-password-s3cr3t" not in text
        assert "broker-password-s3cr3t" not in text
        assert "renewal-api-token-s3cr3t" not in text
        assert "database_url='postgresql+psycopg://pec:***@db.example:5432/pec'" in text
        assert "broker_url='redis://:***@redis.example:6379/0'" in text
        assert "smtp_host='localhost'" in text
    # The values themselves are still there for the code that needs them.
    assert settings.smtp_password == "smtp-password-s3cr3t"
    assert settings.database_url == "postgresql+psycopg://pec:db-password-s3cr3t@db.example:5432/pec"


def test_generated_secret_never_appears_in_repr(var_dir):
    settings = read(var_dir)
    assert settings.secret_keys[0] not in repr(settings)
    assert repr(settings).startswith(f"Settings(var_dir={var_dir.resolve()!r}, database_url='sqlite:///")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PAYMENT_GATEWAY": "stripe"},
            "PEC_RENEWAL_STRIPE_API_KEY: is required when PEC_RENEWAL_PAYMENT_GATEWAY is stripe",
        ),
        (
            {"PAYMENT_GATEWAY": "paypal"},
            "PEC_RENEWAL_PAYPAL_CLIENT_ID: is required when PEC_RENEWAL_PAYMENT_GATEWAY is paypal",
        ),
        (
            {"PAYMENT_GATEWAY": "paypal", "PAYPAL_CLIENT_ID": "id"},
            "PEC_RENEWAL_PAYPAL_CLIENT_SECRET: is required when PEC_RENEWAL_PAYMENT_GATEWAY is paypal",
        ),
    ],
)
def test_a_real_gateway_needs_its_credentials(tmp_path, environ, message):
    full = {"PEC_RENEWAL_VAR_DIR": str(tmp_path), **{f"PEC_RENEWAL_{key}": value for key, value in environ.items()}}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(full)
    assert str(caught.value) == message
