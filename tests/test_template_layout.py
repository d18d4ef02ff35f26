"""The routine templates are composed from files picked by name (issue 9): a driver, a
statement kind, a routine kind and an error mode are each one file exposing the same macros
as its siblings, so adding one means adding a file. These tests hold the folders to that
contract, and check that the names the model gives (Statement.driver_template,
operation_type, Policy.kind_template, error_handling) are files that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from specql.generate import load_project
from specql.render import _block, environment

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "templates" / "sql"

# What the routine parts call on each strategy module.
CONTRACTS = {
    "drivers": {"describe", "declare", "start", "count", "next_batch", "change", "apply", "on_failure",
                "batch_records", "batch_size", "isolate_loop", "restore", "advance"},
    "statements": {"statement", "declare"},
    "error_modes": {"handle"},
    "kinds": {"note", "output_args", "returns", "settings", "declare", "begin", "commit",
              "give_back", "finish", "prokind"},
}


def module_names(folder: str, name: str) -> set[str]:
    module = environment().get_template(f"sql/{folder}/{name}.sql.j2").module
    return {n for n in dir(module) if not n.startswith("_")}


@pytest.mark.parametrize("folder", sorted(CONTRACTS))
def test_every_strategy_file_exposes_the_same_macros(folder):
    files = sorted(p.name.removesuffix(".sql.j2") for p in (SQL / folder).glob("*.sql.j2"))
    assert len(files) >= 2
    for name in files:
        missing = CONTRACTS[folder] - module_names(folder, name)
        assert not missing, f"templates/sql/{folder}/{name}.sql.j2 lacks {sorted(missing)}"


def test_the_model_names_existing_strategy_files():
    sets = [[str(ROOT / "entities")], [str(ROOT / "bench" / "entities")]] + [
        [str(p) for p in sorted(case.glob("*.yaml"))]
        for case in sorted((ROOT / "tests" / "golden").iterdir()) if any(case.glob("*.yaml"))]
    seen = {"drivers": set(), "statements": set(), "kinds": set(), "error_modes": set()}
    for paths in sets:
        ops = [op for entity in load_project(paths).entities for op in entity.operations]
        ops += [op.as_step(step) for op in list(ops) for step in op.steps]  # a multi-step operation's steps
        for op in ops:
            seen["drivers"].add(op.driver_template)
            seen["statements"].add(op.operation_type)
            seen["kinds"].add(op.kind_template)
            if op.batch_savepoints:  # transaction single has no handler of its own
                seen["error_modes"].add(op.error_handling)
    for folder, names in seen.items():
        for name in names:
            assert (SQL / folder / f"{name}.sql.j2").is_file(), f"no templates/sql/{folder}/{name}.sql.j2"
    # Every file is reached by some entity the golden net renders.
    for folder, names in seen.items():
        assert names == {p.name.removesuffix(".sql.j2") for p in (SQL / folder).glob("*.sql.j2")}, folder
    assert {"keys", "keyset", "key_ranges", "source", "steps", "output_keys", "output_records", "call"} <= seen["drivers"]
    assert {"update", "delete", "insert", "upsert", "select", "custom_function"} <= seen["statements"]
    assert seen["kinds"] == {"function", "procedure"}
    assert seen["error_modes"] == {"stop_on_error", "continue_on_error", "collect_errors"}


def test_the_routine_templates_stay_small():
    # The runtime migration's templates (runtime*.sql.j2) have their own owner and shape.
    too_long = {str(p.relative_to(SQL)): n for p in SQL.rglob("*.sql.j2")
                if not p.name.startswith("runtime")
                and (n := len(p.read_text("utf-8").splitlines())) > 150}
    assert not too_long


@pytest.mark.parametrize("text, width, expected", [
    ("", 4, ""),
    ("\n  \n", 4, ""),                       # a part that writes nothing leaves no line
    ("a\nb", 4, "    a\n    b\n"),
    ("a\n\nb\n", 2, "  a\n\n  b\n"),        # blank lines stay blank, one newline at the end
    ("a\n\n", 0, "a\n\n"),                   # a part ending in an empty line keeps it
])
def test_block_filter(text, width, expected):
    assert _block(text, width) == expected
