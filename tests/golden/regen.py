"""Regenerate every golden expectation: `python tests/golden/regen.py [CASE...]`.

Each folder tests/golden/<case>/ holds entity files (*.yaml, the input) beside what specql
generates from them (migrations/*.sql and tests/test_*.py, the expected output), as sqlc's
internal/endtoend cases do. tests/test_golden.py fails when any case's output differs
from its folder by one byte; this script is the one command that rewrites them all after
an intended change (review the diff before committing). It also rewrites generated/,
the committed output of entities/, the same way (`specql generate` and `specql generate
tests`). With CASE names, only those cases (generated/ is the case named `generated`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from specql.generate import MIGRATION_PATTERNS, MIGRATIONS, load_project  # noqa: E402
from specql.plan import plan  # noqa: E402
from specql.testgen import TEST_PATTERNS, TESTS, plan_tests  # noqa: E402
from specql.writer import owned_files, sync  # noqa: E402

FOLDERS = {MIGRATIONS: MIGRATION_PATTERNS, TESTS: TEST_PATTERNS}


def cases() -> list[Path]:
    """Every golden case folder: a folder of tests/golden with entity files in it."""
    return sorted(p for p in HERE.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def inputs(case: Path) -> list[str]:
    return [str(p) for p in sorted(case.glob("*.yaml"))]


def expected_of(paths: list[str]) -> dict[str, dict[str, str]]:
    """{folder: {file name: content}}: what specql generates from the entity files."""
    project = load_project(paths)
    return {
        MIGRATIONS: {f.name: f.content for f in plan(project)},
        TESTS: {f.name: f.content for f in plan_tests(project)},
    }


def on_disk(out: Path) -> dict[str, dict[str, bytes]]:
    return {folder: {name: path.read_bytes() for name, path in owned_files(out / folder, patterns).items()}
            for folder, patterns in FOLDERS.items()}


def write(out: Path, expected: dict[str, dict[str, str]]) -> int:
    """Write the expected files into out/ (removing what is no longer generated); files changed."""
    changed = 0
    for folder, files in expected.items():
        result = sync(out / folder, files, FOLDERS[folder])
        changed += len(result.changed) + len(result.removed)
    return changed


def regenerate_entities() -> int:
    """generated/ from entities/, with the paths as the README's commands give them."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return write(ROOT / "generated", expected_of(["entities/"]))
    finally:
        os.chdir(cwd)


def main(argv: list[str]) -> int:
    wanted = set(argv)
    known = {c.name for c in cases()} | {"generated"}
    if wanted - known:
        print(f"unknown case(s): {', '.join(sorted(wanted - known))}; known: {', '.join(sorted(known))}")
        return 1
    for case in cases():
        if not wanted or case.name in wanted:
            print(f"{case.name}: {write(case, expected_of(inputs(case)))} file(s) changed")
    if not wanted or "generated" in wanted:
        print(f"generated: {regenerate_entities()} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
