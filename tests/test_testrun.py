"""`specql test run` end to end: embedded server, a given server with the lint, failures."""

from __future__ import annotations

import os
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from specql.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_examples_pass_on_the_embedded_server_with_a_junit_report(tmp_path, monkeypatch):
    for name in ("SPECQL_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    junit = tmp_path / "report.xml"
    result = run("test", "run", str(ROOT / "entities"), "--junit-xml", str(junit))
    assert result.exit_code == 0, result.output
    assert "bulk_update_user_status" in result.output and "[PASS in" in result.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) >= 30 and suite.get("failures") == "0" and suite.get("errors") == "0"


def test_given_server_runs_the_lint(pg15_server_url):
    result = run("test", "run", str(ROOT / "entities"), "--database-url", pg15_server_url, "-k", "changes_exactly")
    assert result.exit_code == 0, result.output
    if "lint: skipped" in result.output:
        if os.environ.get("SPECQL_REQUIRE_PG15") == "1":
            pytest.fail("plpgsql_check is not installed for PostgreSQL 15")
        pytest.skip("plpgsql_check is not installed")
    assert "lint: plpgsql_check found 0 error(s), 0 warning(s)" in result.output


def test_a_failing_generated_test_fails_the_run(tmp_path, pg_server_url):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "gadget.yaml").write_text(textwrap.dedent("""
        name: gadget
        fields: {id: uuid, state: string}
        patterns:
          - name: batch_operations
            operation: close_gadgets
            operation_type: update
            update_data: {state: closed}
            where_condition: "state = 'open'"
            preconditions: ["now() < '2000-01-01'"]
    """))
    result = run("test", "run", str(tmp_path / "e"), "--database-url", pg_server_url)
    assert result.exit_code == 1
    assert "[FAIL in" in result.output
    assert re.search(r"^\d+ passed, [1-9]\d* failed", result.output, flags=re.M)


def test_invalid_spec_fails_with_diagnostics(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfields:\n  id: uuid\npatterns:\n  - name: batch_operations\n    operation: o\n"
                   "    operation_type: updte\n")
    result = CliRunner().invoke(main, ["test", "run", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:7:21: error:" in result.output
    assert "Traceback" not in result.output


def test_unreachable_server_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["test", "run", str(ROOT / "entities"), "--database-url",
                                       "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "cannot connect" in line]
    assert len(errors) == 1 and "Traceback" not in result.output


def test_the_project_is_loaded_once(monkeypatch):
    # `specql test run` used to load and validate every entity file three times (the
    # command, generate, generate tests); the pipeline now takes the loaded project.
    import specql.database
    import specql.generate

    loaded: list[str] = []
    real = specql.generate.load_file

    def counting(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return real(path, *args, **kwargs)

    def no_server(url):
        raise specql.database.DatabaseError("no server in this test")

    monkeypatch.setattr(specql.generate, "load_file", counting)
    monkeypatch.setattr(specql.database, "server_url", no_server)
    result = CliRunner().invoke(main, ["test", "run", str(ROOT / "entities")])
    assert sorted(loaded) == sorted(p.name for p in (ROOT / "entities").glob("*.yaml"))
    assert result.exit_code == 1 and "no server in this test" in result.output
