"""Golden tests: every file in tests/bad_entities/ is a realistic mistake.

Beside each `<name>.yaml` lies `<name>.expected`: the exact stderr that
`specql validate tests/bad_entities/<name>.yaml` prints when run from the repository root
(every `path:line:col: error: message` line, then the `N error(s); nothing was written.`
summary). Each expectation was checked by hand: the line:col points at the offending
token and the message says what is wrong.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from specql.cli import main

REPO = Path(__file__).resolve().parent.parent
BAD_DIR = REPO / "tests" / "bad_entities"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
DIAG = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<message>.+)$")
SUMMARY = re.compile(r"^(\d+) error\(s\); nothing was written\.$")


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def expected_lines(bad: Path) -> list[str]:
    return bad.with_suffix(".expected").read_text("utf-8").splitlines()


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    # Diagnostics show paths relative to the working folder.
    monkeypatch.chdir(REPO)


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    # CliRunner turns sys.exit into exit_code; anything else is an escaped exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# ----------------------------------------------------------------------------- the corpus


def test_corpus_is_large_enough_and_complete():
    assert len(BAD_FILES) >= 30
    missing = [f.name for f in BAD_FILES if not f.with_suffix(".expected").is_file()]
    assert missing == []
    orphans = [e.name for e in BAD_DIR.glob("*.expected") if not e.with_suffix(".yaml").is_file()]
    assert orphans == []


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda p: p.stem)
def test_expected_file_is_well_formed(bad: Path):
    """Each expectation names this file, is sorted, and ends with a matching summary."""
    lines = expected_lines(bad)
    assert lines, "empty .expected file"
    *diags, summary = lines
    assert diags, "at least one diagnostic expected"
    keys = []
    for line in diags:
        m = DIAG.match(line)
        assert m, f"not a diagnostic line: {line!r}"
        assert m.group("path") == rel(bad)
        keys.append((int(m.group("line")), int(m.group("col")), m.group("message")))
    assert keys == sorted(keys), "diagnostics must be reported sorted by position"
    m = SUMMARY.match(summary)
    assert m, f"bad summary line: {summary!r}"
    assert int(m.group(1)) == sum(DIAG.match(d).group("severity") == "error" for d in diags)


# ----------------------------------------------------------------------------- validate


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda p: p.stem)
def test_validate_reports_exactly_the_expected_diagnostics(bad: Path):
    result = run_cli("validate", rel(bad))
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == expected_lines(bad)
    assert "ok:" not in result.stdout


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda p: p.stem)
def test_validate_json_matches_the_text_diagnostics(bad: Path):
    result = run_cli("validate", "--format", "json", rel(bad))
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    got = json.loads(result.stdout)
    # The same diagnostics as the text format (the golden test pins the text itself).
    text = run_cli("validate", rel(bad)).stderr.splitlines()[:-1]
    assert text, "text format printed no diagnostics"
    want = []
    for line in text:
        m = DIAG.match(line)
        assert m, f"not a diagnostic line: {line!r}"
        want.append({"path": m.group("path"), "line": int(m.group("line")), "col": int(m.group("col")),
                     "severity": m.group("severity"), "message": m.group("message")})
    assert got == want


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda p: p.stem)
def test_generate_refuses_and_writes_nothing(bad: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("generate", rel(bad), "-o", str(out))
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    assert list(out.rglob("*")) == []
    assert "wrote" not in result.stdout
    # generate validates first and reports the same problems as validate.
    assert result.stderr == run_cli("validate", rel(bad)).stderr


def test_generate_into_missing_folder_does_not_create_it(tmp_path: Path):
    out = tmp_path / "never"
    result = run_cli("generate", rel(BAD_DIR / "where_semicolon.yaml"), "-o", str(out))
    assert result.exit_code == 1
    assert not out.exists()


def test_validating_several_bad_files_reports_all_of_them_sorted_by_path():
    files = [BAD_DIR / "timeout_soon.yaml", BAD_DIR / "batch_size_zero.yaml", BAD_DIR / "yaml_tab_indent.yaml"]
    result = run_cli("validate", *[rel(f) for f in files])
    assert result.exit_code == 1
    want = sorted(line for f in files for line in expected_lines(f)[:-1])
    lines = result.stderr.splitlines()
    assert lines[:-1] == want
    assert lines[-1] == f"{len(want)} error(s); nothing was written."


# ----------------------------------------------------------------------------- the real console script


def _console_script() -> str:
    script = Path(sys.executable).with_name("specql")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    return str(script)


@pytest.mark.parametrize("name", ["where_unknown_column_block", "yaml_tab_indent"])
def test_console_script_validate(name: str):
    bad = BAD_DIR / f"{name}.yaml"
    proc = subprocess.run([_console_script(), "validate", rel(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines() == expected_lines(bad)
    assert proc.stdout == ""


def test_console_script_generate_writes_nothing(tmp_path: Path):
    bad = BAD_DIR / "several_semantic_problems.yaml"
    out = tmp_path / "gen"
    proc = subprocess.run([_console_script(), "generate", rel(bad), "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists() or list(out.rglob("*")) == []


def test_console_script_refuses_an_alias_bomb_in_bounded_time_and_memory():
    """Before the alias budget, this 1 KB file ran for minutes and passed 6 GB (issue 8)."""
    import resource
    import time

    bad = BAD_DIR / "yaml_alias_bomb.yaml"
    started = time.perf_counter()
    proc = subprocess.run([_console_script(), "validate", rel(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == expected_lines(bad)
    assert elapsed < 10, f"{elapsed:.1f} s"  # interpreter start-up included; the refusal itself is ~0.05 s
    assert peak_mb < 400, f"{peak_mb:.0f} MB"
