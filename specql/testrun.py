"""`specql test run`: generate, apply to a throwaway database, lint, run the generated tests.

It takes the project the command line already loaded and validated: the migrations and
the tests are generated from that one load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from psycopg.conninfo import conninfo_to_dict

from . import database, lint
from .generate import as_project, generate
from .harness_tables import create_table
from .migrate import migrate
from .model import Project
from .preflight import missing_functions
from .testgen import generate_tests, unmanaged_tables

TEMPLATE_ENV = "SPECQL_TEMPLATE_DATABASE"


@dataclass
class OperationSummary:
    module: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped


def summarize(junit: Path) -> list[OperationSummary]:
    by_module: dict[str, OperationSummary] = defaultdict(lambda: OperationSummary(""))
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = (case.get("classname") or "?").rsplit(".", 1)[-1]
        summary = by_module[module]
        summary.module = module
        summary.seconds += float(case.get("time") or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            summary.failed += 1
            summary.failures.append(case.get("name") or "?")
        elif case.find("skipped") is not None:
            summary.skipped += 1
        else:
            summary.passed += 1
    return sorted(by_module.values(), key=lambda s: s.module)


def run(project: Project | list[str], *, database_url: str | None, junit_xml: str | None, keyword: str | None,
        echo: Callable[[str], None], verbose: bool = False) -> int:
    """Returns the exit code: 0 all passed, 1 a failure (tests, lint or migrations)."""
    started = time.monotonic()
    project = as_project(project)
    with tempfile.TemporaryDirectory(prefix="specql-test-") as tmp:
        out = Path(tmp)
        generate(project, out)
        tests = generate_tests(project, out)
        echo(f"generated {len(tests.files)} test modules")
        with database.server_url(database_url) as server:
            with database.throwaway_database(server, prefix="specql_run") as url:
                lines: list[str] = []
                if migrate(out, url, echo=lines.append) != 0:
                    for line in lines:
                        echo(line)
                    echo("FAILED: the generated migrations did not apply")
                    return 1
                with database.connect(url, autocommit=True) as conn:
                    missing = missing_functions(conn, project)
                    # manage_table: false means no migration creates the table; the throwaway
                    # database gets it from the entity's fields, so lint and tests can read it.
                    for table in unmanaged_tables(project):
                        create_table(conn, table)
                if missing:
                    for line in missing:
                        echo(line)
                    echo(f"FAILED: {len(missing)} function(s) the entity files call are missing; no test was run")
                    return 1
                lint_failed = _lint(url, out / "migrations", echo)
                code = _pytest(out, server, url, junit_xml, keyword, echo, verbose)
    failed = code not in (0, 5) or lint_failed
    echo(f"{'FAILED' if failed else 'PASSED'} in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


def _lint(url: str, migrations: Path, echo) -> bool:
    with database.connect(url, autocommit=True) as conn:
        if not lint.available(conn):
            echo("lint: skipped (the server has no plpgsql_check extension)")
            return False
        findings = lint.lint(conn, migrations)
    for f in findings:
        echo(f"lint: {f.format()}")
    errors = sum(f.is_error for f in findings)
    echo(f"lint: plpgsql_check found {errors} error(s), {len(findings) - errors} warning(s)")
    return errors > 0


def _pytest(out: Path, server: str, template_url: str, junit_xml: str | None, keyword: str | None,
            echo, verbose: bool) -> int:
    junit = Path(junit_xml).resolve() if junit_xml else out / "junit.xml"
    env = dict(os.environ)
    env["SPECQL_DATABASE_URL"] = server
    env[TEMPLATE_ENV] = conninfo_to_dict(template_url)["dbname"]
    cmd = [sys.executable, "-m", "pytest", str(out / "tests"), "-p", "no:cacheprovider",
           f"--junit-xml={junit}", "-q", "--rootdir", str(out)]
    if keyword:
        cmd += ["-k", keyword]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    if not junit.exists():
        echo(proc.stdout[-4000:] + proc.stderr[-4000:])
        return proc.returncode or 1
    summaries = summarize(junit)
    width = max([len(s.module) for s in summaries] + [10])
    for s in summaries:
        verdict = "PASS" if not s.failed else "FAIL"
        skipped = f", {s.skipped} skipped" if s.skipped else ""
        echo(f"{s.module:<{width}}  {s.passed} of {s.total} passed{skipped} [{verdict} in {s.seconds:.1f}s]")
        for name in s.failures:
            echo(f"    failed: {name}")
    totals = [sum(getattr(s, k) for s in summaries) for k in ("passed", "failed", "skipped")]
    echo(f"{totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    if proc.returncode not in (0, 5) and (verbose or totals[1]):
        echo(proc.stdout[-3000:])
    return proc.returncode
