"""The `specql` command line (SPEC §1): help, exit codes, validate, generate, --check, schema."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

import specql.generate
from specql.cli import main
from specql.validate import entity_schema

REPO = Path(__file__).resolve().parent.parent
ENTITIES = REPO / "entities"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SPECQL_DEBUG", raising=False)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def no_traceback(result) -> bool:
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return not escaped and "Traceback" not in result.output and "Traceback" not in result.stderr


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- help


def _all_commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


ALL_COMMANDS = [path for path, _ in _all_commands(main)]


def test_top_level_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("validate", "generate", "schema", "migrate"):
        assert re.search(rf"^\s+{name}\s", result.stdout, re.M), name


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("specql, version ")


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_registered_command_has_help(path):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert no_traceback(result)


@pytest.mark.parametrize("path", [("validate",), ("generate",), ("schema",), ("migrate",), ("test", "run")],
                         ids=" ".join)
def test_every_command_of_the_spec_has_help(path):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: main {' '.join(path)}" in result.stdout or f"Usage: specql {' '.join(path)}" in result.stdout


def test_help_through_the_console_script():
    script = Path(sys.executable).with_name("specql")
    if not script.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run([str(script), "validate", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: specql validate")


# ----------------------------------------------------------------------------- validate


def test_validate_shipped_entities_exits_0():
    result = run("validate", "entities/")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"ok: \d+ entities, \d+ operations\n", result.stdout)
    assert " error:" not in result.stderr


def test_validate_single_file_and_yml_folder(tmp_path: Path):
    shutil.copy(ENTITIES / "user.yaml", tmp_path / "user.yml")
    assert run("validate", "entities/user.yaml").exit_code == 0
    result = run("validate", str(tmp_path))
    assert result.exit_code == 0, result.output
    declared = len(yaml.safe_load((ENTITIES / "user.yaml").read_text("utf-8"))["patterns"])
    assert declared >= 3  # the seed's two single-step operations and its multi-step migration
    assert result.stdout == f"ok: 1 entities, {declared} operations\n"


def test_validate_json_format_on_valid_entities():
    result = run("validate", "--format", "json", "entities/")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    assert isinstance(data, list)
    for item in data:
        assert set(item) == {"path", "line", "col", "severity", "message"}
        assert item["severity"] == "warning"


def test_validate_json_format_on_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: user\nfeilds:\n  id: uuid\n")
    result = run("validate", "--format", "json", str(bad))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data == sorted(data, key=lambda d: (d["path"], d["line"], d["col"], d["message"]))
    by_message = {d["message"]: d for d in data}
    typo = by_message["unknown key 'feilds' (did you mean 'fields'?)"]
    assert (typo["line"], typo["col"], typo["severity"]) == (2, 1, "error")
    assert typo["path"].endswith("bad.yaml")
    assert all(isinstance(d["line"], int) and isinstance(d["col"], int) for d in data)
    assert "error(s)" not in result.stdout


def test_validate_missing_path_exits_1():
    result = run("validate", "no/such/folder")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "no/such/folder:1:1: error: no such file or folder"
    assert no_traceback(result)


def test_validate_reports_problems_of_all_files_sorted(tmp_path: Path):
    (tmp_path / "b.yaml").write_text("name: b\nfields:\n  id: uuid\n  x: strng\n")
    (tmp_path / "a.yaml").write_text("name: a\nfields:\n  id: uuid\nzzz: 1\n")
    result = run("validate", str(tmp_path))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [re.sub(r"^.*/", "", line) for line in lines] == [
        "a.yaml:4:1: error: unknown key 'zzz'",
        "b.yaml:4:6: error: fields.x: unknown type 'strng' (did you mean 'string'?)",
        "2 error(s); nothing was written.",
    ]


# ----------------------------------------------------------------------------- generate


def test_generate_is_deterministic_and_check_detects_staleness(tmp_path: Path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    first = run("generate", "entities/", "-o", str(out1))
    assert first.exit_code == 0, first.output
    assert no_traceback(first)
    files = snapshot(out1)
    assert files and all(name.startswith("migrations/") and name.endswith(".sql") for name in files)
    assert sorted(files) == sorted(files, key=str)  # names sort in apply order

    # same input, same bytes: a second run into a fresh folder and into the same folder
    assert run("generate", "entities/", "-o", str(out2)).exit_code == 0
    assert snapshot(out2) == files
    assert run("generate", "entities/", "-o", str(out1)).exit_code == 0
    assert snapshot(out1) == files

    check = run("generate", "entities/", "-o", str(out1), "--check")
    assert check.exit_code == 0, check.output
    assert snapshot(out1) == files  # --check writes nothing

    victim = out1 / sorted(files)[-1]
    victim.write_text(victim.read_text("utf-8") + "\n-- hand edit\n", "utf-8")
    edited = snapshot(out1)
    stale = run("generate", "entities/", "-o", str(out1), "--check")
    assert stale.exit_code == 1
    assert f"stale: {victim.name}" in stale.stderr
    assert snapshot(out1) == edited  # still writes nothing

    assert run("generate", "entities/", "-o", str(out1)).exit_code == 0
    assert snapshot(out1) == files


def test_check_detects_missing_and_extra_files(tmp_path: Path):
    out = tmp_path / "gen"
    assert run("generate", "entities/", "-o", str(out)).exit_code == 0
    migrations = sorted((out / "migrations").glob("*.sql"))
    migrations[0].unlink()
    assert run("generate", "entities/", "-o", str(out), "--check").exit_code == 1
    assert run("generate", "entities/", "-o", str(out)).exit_code == 0
    (out / "migrations" / "9999_left_over.sql").write_text("SELECT 1;\n")
    result = run("generate", "entities/", "-o", str(out), "--check")
    assert result.exit_code == 1
    assert "9999_left_over.sql" in result.stderr


def test_check_on_missing_folder_exits_1_and_creates_nothing(tmp_path: Path):
    out = tmp_path / "never"
    result = run("generate", "entities/", "-o", str(out), "--check")
    assert result.exit_code == 1
    assert not out.exists()


def test_generated_output_does_not_depend_on_the_working_folder(tmp_path: Path, monkeypatch):
    out_here, out_there = tmp_path / "here", tmp_path / "there"
    assert run("generate", "entities/", "-o", str(out_here)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = run("generate", str(ENTITIES), "-o", str(out_there))
    assert result.exit_code == 0, result.output
    assert snapshot(out_there) == snapshot(out_here)


def test_generate_through_the_console_script_is_deterministic(tmp_path: Path):
    script = Path(sys.executable).with_name("specql")
    if not script.exists():
        pytest.skip("console script not installed")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = subprocess.run([str(script), "generate", "entities/", "-o", str(out)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(snapshot(out))
    assert outs[0] == outs[1] and outs[0]


def test_generate_tests_writes_pytest_modules(tmp_path: Path):
    # SPEC §1: `specql generate tests PATH... [-o DIR]` writes DIR/tests/test_*.py
    out = tmp_path / "gen"
    result = run("generate", "tests", "entities/", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert no_traceback(result)
    modules = sorted((out / "tests").glob("test_*.py"))
    assert modules
    for module in modules:
        compile(module.read_text("utf-8"), str(module), "exec")


# ----------------------------------------------------------------------------- schema


def test_schema_prints_valid_json():
    result = run("schema")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data == entity_schema()
    assert data["$schema"].startswith("https://json-schema.org/")


# ----------------------------------------------------------------------------- internal errors


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize("args", [("validate", "entities/"), ("generate", "entities/", "-o", "unused-out")])
def test_internal_error_exits_2_without_traceback(monkeypatch, tmp_path, args):
    monkeypatch.setattr(specql.generate, "load_project", _boom)
    monkeypatch.chdir(tmp_path)
    args = tuple(str(REPO / a) if a == "entities/" else a for a in args)
    result = run(*args)
    assert result.exit_code == 2
    assert no_traceback(result)
    assert "internal error" in result.stderr and "RuntimeError: boom" in result.stderr
    assert not (tmp_path / "unused-out").exists()


def test_internal_error_with_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(specql.generate, "load_project", _boom)
    monkeypatch.setenv("SPECQL_DEBUG", "1")
    result = run("validate", "entities/")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_internal_error_in_the_model_exits_2(monkeypatch):
    import specql.model.build

    monkeypatch.setattr(specql.model.build, "schema_check", _boom)
    result = run("validate", "entities/")
    assert result.exit_code == 2
    assert no_traceback(result)
