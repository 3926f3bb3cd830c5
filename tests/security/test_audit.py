"""The dependency audit's own decisions (scripts/pypi_audit.py), on canned JSON: no network.

And the lock file it audits: every dependency of pyproject.toml is pinned there.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pypi_audit", ROOT / "scripts" / "pypi_audit.py")
pypi_audit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pypi_audit  # dataclasses look their module up there
_spec.loader.exec_module(pypi_audit)

CLEAN, VULNERABLE, NOT_AUDITED = pypi_audit.CLEAN, pypi_audit.VULNERABLE, pypi_audit.NOT_AUDITED


def project(latest: str, *vulnerabilities: dict) -> dict:
    """PyPI's project JSON, as much of it as the audit reads."""
    return {"info": {"name": "example", "version": latest}, "vulnerabilities": list(vulnerabilities), "releases": {}}


def vulnerability(id: str, fixed_in=(), withdrawn=None, aliases=()) -> dict:
    return {
        "id": id,
        "aliases": list(aliases),
        "fixed_in": list(fixed_in),
        "withdrawn": withdrawn,
        "link": f"https://osv.dev/vulnerability/{id}",
        "details": "...",
    }


@pytest.mark.parametrize(
    "pinned, data, kind, words",
    [
        ("2.0.0", project("2.0.0"), CLEAN, "latest release"),
        (
            "2.0.0",
            project("2.0.0", vulnerability("PYSEC-1", aliases=["CVE-2027-1"])),
            VULNERABLE,
            "PYSEC-1/CVE-2027-1 (no fix listed)",
        ),
        (
            "2.0.0",
            project("2.0.0", vulnerability("PYSEC-1", withdrawn="2027-01-01T00:00:00Z")),
            CLEAN,
            "latest release",
        ),
        # A fix newer than our pin: vulnerable, whatever the latest release is.
        ("2.0.0", project("2.1.0", vulnerability("GHSA-x", fixed_in=["2.1.1"])), VULNERABLE, "GHSA-x (fixed in 2.1.1)"),
        (
            "2.0.0",
            project("2.0.0", vulnerability("GHSA-x", fixed_in=["1.9.9", "2.0.1"])),
            VULNERABLE,
            "fixed in 1.9.9, 2.0.1",
        ),
        ("2.0.0rc1", project("2.0.0", vulnerability("GHSA-x", fixed_in=["2.0.0"])), VULNERABLE, "GHSA-x"),
        # The latest release is affected and nothing newer than our older pin fixes it: assume ours is too.
        (
            "1.5.0",
            project("2.0.0", vulnerability("PYSEC-2", fixed_in=["1.4.0"])),
            VULNERABLE,
            "the latest release 2.0.0 is affected",
        ),
        # An older pin with nothing listed: PyPI's list says nothing about it.
        ("1.5.0", project("2.0.0"), NOT_AUDITED, "older than the latest release 2.0.0"),
        (
            "1.5.0",
            project("2.0.0", vulnerability("PYSEC-3", withdrawn="2027-01-01")),
            NOT_AUDITED,
            "latest release only",
        ),
        ("3.0.0.dev1", project("2.0.0"), NOT_AUDITED, "newer than the latest release 2.0.0"),
        ("not-a-version", project("2.0.0"), NOT_AUDITED, "no comparable version"),
        ("2.0.0", {"vulnerabilities": []}, NOT_AUDITED, "no comparable version"),
        # Versions compare as versions, not as text.
        ("2.10.0", project("2.10.0", vulnerability("GHSA-y", fixed_in=["2.9.0"])), VULNERABLE, "GHSA-y"),
        ("2.10.0", project("2.10.0"), CLEAN, ""),
        ("2.10.0", project("2.10.0", vulnerability("GHSA-z", fixed_in=["2.9.1"], withdrawn="yes")), CLEAN, ""),
    ],
)
def test_decisions_from_pypis_project_json(pinned, data, kind, words):
    verdict = pypi_audit.decide_from_project_json("example", pinned, data)
    assert verdict.kind == kind, verdict
    assert words in verdict.detail
    assert verdict.line().startswith(kind)


def test_pip_audit_findings_are_kept_and_its_skips_go_to_the_fallback():
    pins = {"flask": "3.1.3", "jinja2": "3.1.0", "stripe": "16.1.0", "requests": "2.34.2", "gone": "1.0"}
    report = {
        "dependencies": [
            {"name": "Flask", "version": "3.1.3", "vulns": []},
            {
                "name": "Jinja2",
                "version": "3.1.0",
                "vulns": [{"id": "GHSA-j", "fix_versions": ["3.1.5"], "aliases": ["CVE-2024-9"]}],
            },
            {"name": "stripe", "skip_reason": "Dependency not found on PyPI and could not be audited: stripe (16.1.0)"},
        ],
        "fixes": [],
    }
    answers = {"stripe": project("16.1.0"), "requests": project("2.35.0")}
    asked = []

    def fetch(name):
        asked.append(name)
        if name not in answers:
            raise pypi_audit.ProjectUnavailable("PyPI answered 404 for the project")
        return answers[name]

    verdicts = {verdict.name: verdict for verdict in pypi_audit.audit(pins, report, fetch)}
    assert sorted(asked) == ["gone", "requests", "stripe"]  # only what pip-audit did not audit
    assert [name for name in verdicts] == sorted(pins)
    assert verdicts["flask"].kind == CLEAN and "pip-audit" in verdicts["flask"].detail
    assert verdicts["jinja2"].kind == VULNERABLE and "GHSA-j/CVE-2024-9 (fixed in 3.1.5)" in verdicts["jinja2"].detail
    assert verdicts["stripe"].kind == CLEAN
    assert verdicts["requests"].kind == NOT_AUDITED
    assert verdicts["gone"].kind == NOT_AUDITED and "404" in verdicts["gone"].detail
    assert pypi_audit.exit_status(list(verdicts.values())) == 1


def test_exit_status_fails_on_a_vulnerability_and_on_a_check_that_audited_nothing():
    verdict = pypi_audit.Verdict
    clean, warning = verdict("a", "1", CLEAN, ""), verdict("b", "1", NOT_AUDITED, "why")
    assert pypi_audit.exit_status([clean, warning]) == 0  # warnings alone do not fail
    assert pypi_audit.exit_status([clean, verdict("c", "1", VULNERABLE, "X")]) == 1
    assert pypi_audit.exit_status([warning, warning]) == 2  # skipped everything: proves nothing
    assert pypi_audit.exit_status([]) == 2


def test_main_prints_one_line_per_package_and_a_summary(tmp_path, capsys):
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nflask==3.1.3\nJinja2==3.1.6\nstripe==15.0.0\n\n")
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "dependencies": [
                    {"name": n, "skip_reason": "could not be audited"} for n in ("flask", "jinja2", "stripe")
                ]
            }
        )
    )
    answers = {
        "flask": project("3.1.3"),
        "jinja2": project("3.1.6", vulnerability("GHSA-new")),
        "stripe": project("16.1.0"),
    }
    status = pypi_audit.main([str(lock), "--pip-audit-report", str(report)], fetch=answers.__getitem__)
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert lines[0] == "clean        flask==3.1.3  the latest release; PyPI lists no vulnerability for it"
    assert lines[1].startswith("VULNERABLE   jinja2==3.1.6  GHSA-new")
    assert lines[2].startswith("not audited  stripe==15.0.0  older than the latest release 16.1.0")
    assert lines[3] == f"audit of {lock}: 1 clean, 1 vulnerable, 1 not audited (warnings)"
    # No pip-audit report at all (pip-audit failed): every package goes to the fallback.
    answers["jinja2"] = project("3.1.6")
    report.write_text("")
    assert pypi_audit.main([str(lock), "--pip-audit-report", str(report)], fetch=answers.__getitem__) == 0


def test_read_lock_takes_exact_pins_only():
    assert pypi_audit.read_lock("Flask==3.1.3\n# x\npsycopg[binary]==3.3.9 ; python_version >= '3.11'\n") == {
        "flask": "3.1.3",
        "psycopg": "3.3.9",
    }
    with pytest.raises(ValueError):
        pypi_audit.read_lock("flask>=3\n")


def test_the_lock_pins_every_dependency_of_pyproject():
    """Fails when a dependency is added to pyproject.toml without running scripts/lock."""
    metadata = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*metadata["dependencies"], *metadata["optional-dependencies"]["test"]]
    names = {pypi_audit.normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)) for requirement in wanted}
    pins = pypi_audit.read_lock((ROOT / "requirements" / "lock.txt").read_text())
    assert names - set(pins) == set(), "run scripts/lock"
