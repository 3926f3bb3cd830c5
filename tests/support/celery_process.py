"""Real Celery worker processes for the tests: their environment, their start and their stop.

Every worker talks to the test database, the test Redis DB and (when given)
the aiosmtpd server on loopback.  Its metrics port is off unless a test asks
for one, so two workers never compete for the same port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.settings import TEST_REDIS_URL, TEST_SECRET_KEYS

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/ is two folders down


def worker_environment(tmp_path: Path, database_url: str, smtp_server=None, **settings) -> dict:
    """The environment of a worker process; ``settings`` are more ``PEC_RENEWAL_*`` values (lower case)."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
            "PEC_RENEWAL_DATABASE_URL": database_url,
            "PEC_RENEWAL_BROKER_URL": TEST_REDIS_URL,
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
            "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
            "PEC_RENEWAL_METRICS_PORT": "0",
        }
    )
    if smtp_server is not None:
        env.update(
            {
                "PEC_RENEWAL_MAIL_BACKEND": "smtp",
                "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
                "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
            }
        )
    env.update({f"PEC_RENEWAL_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def start_celery_worker(
    env: dict, directory: Path, *, name: str = "worker", queues: str | None = None, concurrency: int = 2
) -> subprocess.Popen:
    """``celery worker`` in a subprocess, its output in ``directory/<name>.log``."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        f"--concurrency={concurrency}",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=INFO",
    ]
    if queues is not None:
        command += ["-Q", queues]
    with open(directory / f"{name}.log", "w") as log:
        return subprocess.Popen(command, env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT)


def stop_celery_worker(process: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM), as systemd does; SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
