"""Known vulnerabilities in a lock file: pip-audit's findings, completed from PyPI's project JSON.

``scripts/audit`` runs pip-audit first.  pip-audit reads PyPI's per-version JSON
(``/pypi/<name>/<version>/json``) or OSV; where neither answers it "skips" the package, and a check
that skips everything can never fail.  For each package pip-audit could not audit, this script
reads the project-level JSON (``/pypi/<name>/json``), which does answer.  Its ``vulnerabilities``
list is computed by PyPI for the latest release only, so:

- a pin equal to the latest release is audited exactly by that list;
- a listed vulnerability whose ``fixed_in`` is newer than our pin fails, whatever the pin;
- a vulnerability listed for the latest release, with no fix newer than our (older) pin, fails too:
  it is most likely ours as well, and a false alarm costs less than a miss;
- otherwise an older pin cannot be audited from this JSON: a warning, with the reason.

It prints one line per package (clean, VULNERABLE or not audited) and a summary, and exits 1 on
any known vulnerability, 2 when no package at all could be audited (the check would prove nothing),
and 0 otherwise.  Only the standard library and ``packaging`` (which pip-audit installs) are used.

    python scripts/pypi_audit.py requirements/lock.txt [--pip-audit-report REPORT.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

CLEAN = "clean"
VULNERABLE = "VULNERABLE"
NOT_AUDITED = "not audited"
PYPI_PROJECT_URL = "https://pypi.org/pypi/{name}/json"


@dataclass(frozen=True)
class Verdict:
    name: str
    version: str
    kind: str  # CLEAN, VULNERABLE or NOT_AUDITED
    detail: str

    def line(self) -> str:
        return f"{self.kind:<12} {self.name}=={self.version}  {self.detail}"


class ProjectUnavailable(Exception):
    """PyPI's project JSON could not be read: the reason is the message."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """``name==version`` lines (comments, blanks and markers after ``;`` ignored)."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s]+)", line)
        if match is None:
            raise ValueError(f"not an exact pin: {raw!r}")
        pins[normalise(match.group(1))] = match.group(3)
    return pins


def _describe(vulnerability: dict) -> str:
    names = [vulnerability.get("id") or "?", *(vulnerability.get("aliases") or [])]
    fixed = vulnerability.get("fixed_in") or []
    return (
        f"{'/'.join(dict.fromkeys(names))} (fixed in {', '.join(fixed)})"
        if fixed
        else f"{'/'.join(dict.fromkeys(names))} (no fix listed)"
    )


def _newer_than(candidate: str, pin: Version) -> bool:
    try:
        return Version(candidate) > pin
    except InvalidVersion:
        return True  # a fix we cannot compare: assume it is not in our pin


def decide_from_project_json(name: str, pinned: str, project: dict) -> Verdict:
    """The verdict on ``name==pinned`` from PyPI's project JSON (the rules in the module docstring)."""
    try:
        pin = Version(pinned)
        latest = Version(project["info"]["version"])
    except (InvalidVersion, KeyError, TypeError) as error:
        return Verdict(name, pinned, NOT_AUDITED, f"no comparable version ({error})")
    vulnerabilities = [entry for entry in project.get("vulnerabilities") or [] if not entry.get("withdrawn")]
    fixed_after_pin = [
        entry for entry in vulnerabilities if any(_newer_than(fix, pin) for fix in entry.get("fixed_in") or [])
    ]
    if fixed_after_pin:
        return Verdict(name, pinned, VULNERABLE, "; ".join(_describe(entry) for entry in fixed_after_pin))
    if pin == latest:
        if vulnerabilities:
            return Verdict(name, pinned, VULNERABLE, "; ".join(_describe(entry) for entry in vulnerabilities))
        return Verdict(name, pinned, CLEAN, "the latest release; PyPI lists no vulnerability for it")
    if vulnerabilities:
        return Verdict(
            name,
            pinned,
            VULNERABLE,
            f"the latest release {latest} is affected, and no fix newer than our pin is listed: "
            + "; ".join(_describe(entry) for entry in vulnerabilities),
        )
    relation = "older than" if pin < latest else "newer than"
    return Verdict(
        name,
        pinned,
        NOT_AUDITED,
        f"{relation} the latest release {latest}: PyPI lists vulnerabilities for the latest release only",
    )


def decide_from_pip_audit(name: str, pinned: str, dependency: dict) -> Verdict | None:
    """pip-audit's verdict, or None when it skipped the package."""
    if dependency.get("skip_reason"):
        return None
    vulnerabilities = dependency.get("vulns") or []
    if not vulnerabilities:
        return Verdict(name, pinned, CLEAN, "pip-audit: no known vulnerability")
    described = [
        _describe({"id": entry.get("id"), "aliases": entry.get("aliases"), "fixed_in": entry.get("fix_versions")})
        for entry in vulnerabilities
    ]
    return Verdict(name, pinned, VULNERABLE, "pip-audit: " + "; ".join(described))


def fetch_project(name: str) -> dict:
    """PyPI's project JSON for ``name``, or ProjectUnavailable with the reason."""
    request = urllib.request.Request(PYPI_PROJECT_URL.format(name=name), headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise ProjectUnavailable(f"PyPI answered {error.code} for the project") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise ProjectUnavailable(f"PyPI could not be reached ({getattr(error, 'reason', error)})") from None
    except ValueError as error:
        raise ProjectUnavailable(f"PyPI's answer is not JSON ({error})") from None


def audit(pins: dict[str, str], pip_audit_report: dict | None, fetch: Callable[[str], dict]) -> list[Verdict]:
    """One verdict per pin, sorted by name: pip-audit's where it audited, PyPI's project JSON elsewhere."""
    audited = {}
    for dependency in (pip_audit_report or {}).get("dependencies", []):
        name = normalise(dependency.get("name", ""))
        if name in pins and (verdict := decide_from_pip_audit(name, pins[name], dependency)) is not None:
            audited[name] = verdict

    def fallback(name: str) -> Verdict:
        try:
            project = fetch(name)
        except ProjectUnavailable as error:
            return Verdict(name, pins[name], NOT_AUDITED, str(error))
        return decide_from_project_json(name, pins[name], project)

    remaining = sorted(name for name in pins if name not in audited)
    with ThreadPoolExecutor(max_workers=8) as pool:
        audited.update(zip(remaining, pool.map(fallback, remaining), strict=True))
    return [audited[name] for name in sorted(audited)]


def exit_status(verdicts: list[Verdict]) -> int:
    if any(verdict.kind == VULNERABLE for verdict in verdicts):
        return 1
    if not any(verdict.kind == CLEAN for verdict in verdicts):
        return 2
    return 0


def main(argv: list[str] | None = None, fetch: Callable[[str], dict] = fetch_project) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--pip-audit-report", type=Path, help="pip-audit's --format json output, if it ran")
    arguments = parser.parse_args(argv)
    pins = read_lock(arguments.lock.read_text())
    report = None
    if arguments.pip_audit_report is not None:
        try:
            report = json.loads(arguments.pip_audit_report.read_text() or "null")
        except (OSError, ValueError):
            report = None  # pip-audit failed before writing a report: every package goes to the fallback
    verdicts = audit(pins, report, fetch)
    for verdict in verdicts:
        print(verdict.line())
    counts = {kind: sum(verdict.kind == kind for verdict in verdicts) for kind in (CLEAN, VULNERABLE, NOT_AUDITED)}
    print(
        f"audit of {arguments.lock}: {counts[CLEAN]} clean, {counts[VULNERABLE]} vulnerable, "
        f"{counts[NOT_AUDITED]} not audited (warnings)"
    )
    status = exit_status(verdicts)
    if status == 2:
        print("audit: no package could be audited, so this check proves nothing", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
