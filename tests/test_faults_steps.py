"""The generated tests of multi-step operations (templates/tests/steps.py.j2) catch real bugs:
each fault below is injected into the generated SQL of the example entities' multi-step
operations (and of SHIPMENT, a commit_per_batch multi-step procedure, which no example is),
one at a time, and the operation's generated tests must fail. The machinery is
tests/test_faults.py's (same fixture shape, same runner)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specql.generate import generate
from specql.testgen import generate_tests

from test_faults import run_generated_tests, with_fault

ROOT = Path(__file__).resolve().parent.parent

# name -> (migration file part, generated test module, regex, replacement)
FAULTS = {
    # the update walking the select's keys never reads their last chunk
    "a step reading an output skips its last chunk": (
        "public.user", "test_public_migrate_user_data",
        r"(AND o\.output = 'validated_user_ids' AND o\.chunk > _chunk)",
        r"\1 AND o.chunk < (SELECT max(m.chunk) FROM specql.batch_operation_outputs AS m "
        r"WHERE m.operation_id = _result.operation_id AND m.output = 'validated_user_ids')"),
    "a step row does not sum its batches": (
        "public.user", "test_public_migrate_user_data",
        r"processed_records = _result\.processed_records - _step_base\.processed_records,",
        "processed_records = _result.processed_records - _step_base.processed_records - 1,"),
    # the update step's SET loses a column: every count is right, the rows are not
    "an update step leaves a column out": (
        "public.user", "test_public_migrate_user_data",
        r"SET migrated_at = now\(\),\s+migration_version = '2\.0'", "SET migrated_at = now()"),
    # stop_on_error: the steps after a failed one start anyway
    "the steps after a failed step still start": (
        "public.user", "test_public_migrate_user_data",
        r"IF _stop IS NOT NULL THEN(\s+)NULL;  -- the run stopped before this step", r"IF false THEN\1NULL;"),
    "a completed run keeps its outputs": (
        "public.user", "test_public_migrate_user_data",
        r"DELETE FROM specql\.batch_operation_outputs WHERE operation_id = _result\.operation_id;", "NULL;"),
    "a step takes the operation's batch size, not its own": (
        "public.user", "test_public_migrate_user_data",
        r"nullif\(_outer_batch_size, ''\)::integer, 500\);", "nullif(_outer_batch_size, '')::integer, 100);"),
    # refresh_product_cache's function rows (a stand-in's): the last, partial chunk is never stored
    "a function's rows lose their last chunk": (
        "public.product_cache", "test_public_refresh_product_cache",
        r"IF cardinality\(_items\) > 0 THEN", "IF false THEN"),
    # the position a commit_per_batch step saves is 5 keys before its batch's end
    "a resumed step redoes part of its last batch": (
        "public.shipment", "test_public_archive_shipments",
        r"'next', _to \+ 1\)", "'next', _to - 4)"),
}

# A step with a target_entity of its own (another table than the operation's): no fault is
# planted in it, its generated tests pass (the step's SQL works on its own table, which the
# tests seed; its counts are the replay's).
BOX = """
name: box
fields:
  id: integer
  status: string
patterns:
  - name: batch_operations
    operation: close_boxes
    steps:
      - name: open_boxes
        operation_type: select
        where_condition: "status = 'open'"
      - name: close_them
        operation_type: update
        update_data: {status: closed}
        where_condition: "id IN (:open_boxes_ids)"
      - name: drop_junk
        target_entity: item
        operation_type: delete
        where_condition: "kind = 'junk'"
    batch_size: 20
"""
ITEM = """
name: item
fields:
  id: integer
  kind: string
"""
EXTRA_MODULES = ["test_public_close_boxes"]

SHIPMENT = """
name: shipment
fields:
  id: integer
  status: string
  weight: integer
patterns:
  - name: batch_operations
    operation: archive_shipments
    steps:
      - name: heavy
        operation_type: select
        where_condition: "status = 'heavy'"
        batch_size: 40
      - name: mark_heavy
        operation_type: update
        update_data: {status: archived}
        where_condition: "id IN (:heavy_ids)"
        batch_size: 30
      - name: drop_light
        operation_type: delete
        where_condition: "status = 'light'"
        batch_size: 25
    transaction: commit_per_batch
    batch_size: 50
"""


def first_failure(out: Path, migrations: Path, module: str, server: str) -> subprocess.CompletedProcess:
    """run_generated_tests, stopping at the first failing test (-x): a fault needs one to be caught."""
    env = dict(os.environ, SPECQL_DATABASE_URL=server, SPECQL_MIGRATIONS=str(migrations))
    env.pop("SPECQL_TEMPLATE_DATABASE", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(out / "tests" / f"{module}.py"), "-q", "-x", "-p", "no:cacheprovider",
         "--rootdir", str(out)],
        cwd=out, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    extra = tmp_path_factory.mktemp("extra_entities")
    (extra / "shipment.yaml").write_text(SHIPMENT)
    (extra / "box.yaml").write_text(BOX)
    (extra / "item.yaml").write_text(ITEM)
    sources = [str(ROOT / "entities"), str(extra)]
    generate(sources, out)
    generate_tests(sources, out)
    return out


def test_the_unchanged_sql_passes_its_generated_tests(generated, pg_server_url):
    for module in sorted({module for _, module, _, _ in FAULTS.values()} | set(EXTRA_MODULES)):
        proc = run_generated_tests(generated, generated / "migrations", module, pg_server_url)
        assert proc.returncode == 0, f"{module}:\n{proc.stdout[-3000:]}"
        assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-1000:]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_generated_tests_catch_the_fault(fault, generated, pg_server_url, tmp_path):
    part, module, pattern, replacement = FAULTS[fault]
    faulty = with_fault(generated, tmp_path, part, pattern, replacement)
    proc = first_failure(generated, faulty, module, pg_server_url)
    assert proc.returncode == 1, f"fault not caught: {fault}\n{proc.stdout[-3000:]}"
    caught_by = re.findall(r"^FAILED \S+::(\w+)", proc.stdout, flags=re.M)
    assert caught_by, proc.stdout[-3000:]
    print(f"{fault}: caught by {', '.join(sorted(set(caught_by)))}")
