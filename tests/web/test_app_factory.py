"""The app factory reads its settings from the environment, and ``pec-renewal serve`` is there."""

from __future__ import annotations

from click.testing import CliRunner

from worker.cli.main import main
from worker.web import create_app


def test_create_app_without_arguments_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEC_RENEWAL_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PEC_RENEWAL_SECRET_KEYS", "k" * 40 + ",n" + "m" * 40)
    monkeypatch.setenv("PEC_RENEWAL_BASE_URL", "https://rinnovi.example.it")
    app = create_app()
    assert app.config["SECRET_KEY"] == "n" + "m" * 40  # the newest key signs
    assert app.config["SECRET_KEY_FALLBACKS"] == ["k" * 40]
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    monkeypatch.setenv("PEC_RENEWAL_BASE_URL", "http://127.0.0.1:5000")
    assert create_app().config["SESSION_COOKIE_SECURE"] is False


def test_serve_command_is_registered():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output
