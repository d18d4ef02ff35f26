"""The harness behind generated tests (specql.testing): the data it seeds must give every
operation a target that spans several batches, in the order the routine walks it."""

from __future__ import annotations

import pytest

from helpers import connect, generate_and_apply, write_entities
from specql.generate import load_project
from specql.testgen import facts
from specql.testing import Harness

TICKET = """
name: ticket
fields:
  id: bigint
  status: string
  owner: string
patterns:
  - name: batch_operations
    operation: move_tickets
    operation_type: update
    update_data: {status: ":to_status"}
    where_condition: "status = :from_status AND owner <> :nobody"
    batch_size: 100
"""


@pytest.fixture
def h(database_url, tmp_path):
    entities = write_entities(tmp_path / "entities", ticket=TICKET)
    generate_and_apply(database_url, entities, tmp_path / "out")
    [op] = [op for e in load_project([str(entities)]).entities for op in e.operations]
    with connect(database_url) as conn:
        yield Harness(conn, facts(op))


def test_a_string_compared_with_a_parameter_gets_few_values(h):
    params, target = h.seed_until(h.params, 251)
    assert len(target) >= 251
    assert h.seeded <= 10_000, f"seeded {h.seeded} rows for a target of {len(target)}"
    distinct = h.conn.execute("SELECT count(DISTINCT status), count(DISTINCT owner) FROM public.ticket").fetchone()
    assert distinct == (10, 10)


def test_target_keys_come_in_key_order_not_text_order(h):
    params, target = h.seed_until(h.params, 251)
    keys = [int(k) for k in target]
    assert keys == sorted(keys) and keys != sorted(keys, key=str)


def test_make_target_dense_renumbers_the_target_first(h):
    params, target = h.seed_until(h.params, 251)
    rows_before = h.count()
    params, dense = h.make_target_dense(h.params)
    assert len(dense) == len(target)
    assert [int(k) for k in dense] == list(range(1, len(dense) + 1))
    assert h.count() == rows_before


# --- facts from the model, templates per driver

def test_facts_hold_every_plain_field_of_the_model(tmp_path):
    """A field added to the model reaches the generated tests without a hand-edit: every
    dataclass field of the statement, the policy and a column holding plain data is a fact."""
    from dataclasses import fields

    from specql.testgen import _SKIP, POLICY_SKIP, _plain

    entities = write_entities(tmp_path / "entities", ticket=TICKET)
    [op] = [op for e in load_project([str(entities)]).entities for op in e.operations]
    got = facts(op)
    for part in (op.statement, op.policy):
        plain = [f.name for f in fields(part) if _plain(getattr(part, f.name)) is not _SKIP
                 and f.name not in POLICY_SKIP]
        assert plain and not [name for name in plain if name not in got], type(part).__name__
    [column] = [c for c in got["columns"] if c["name"] == "status"]
    assert {f.name for f in fields(op.target.columns["status"])} <= set(column)


def test_one_test_template_per_driver_each_small():
    from pathlib import Path

    from specql.testgen import template_name

    folder = Path(__file__).resolve().parent.parent / "templates" / "tests"
    for driver in ("keys", "keyset", "source"):
        name = template_name(type("Op", (), {"statement": type("S", (), {"driver": driver})})())
        assert (folder.parent / name).exists(), name
    sizes = {p.name: len(p.read_text("utf-8").splitlines()) for p in folder.glob("*.j2")}
    assert not {n: s for n, s in sizes.items() if s > 150}, sizes
    for path in folder.glob("*.j2"):
        assert "if op.driver" not in path.read_text("utf-8"), f"{path.name} forks on the driver"


# --- an unmanaged table, and a reference to another entity's table

WAREHOUSE = """
name: warehouse
fields:
  id: integer
  code: {type: string, nullable: false, unique: true}
"""

STOCK = """
name: stock
manage_table: false
fields:
  id: uuid
  warehouse_id: {type: integer, references: warehouse, nullable: false}
  quantity: integer
patterns:
  - name: batch_operations
    operation: zero_stock
    operation_type: update
    update_data: {quantity: 0}
    where_condition: "warehouse_id = :warehouse_id"
"""


def test_an_unmanaged_table_is_created_and_its_references_seeded(database_url, tmp_path):
    entities = write_entities(tmp_path / "entities", warehouse=WAREHOUSE, stock=STOCK)
    generate_and_apply(database_url, entities, tmp_path / "out")
    project = load_project([str(entities)])
    [op] = [op for e in project.entities for op in e.operations]
    with connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.stock')").fetchone()[0] is None
        h = Harness(conn, facts(op, project.entities))
        h.create_table()
        params, target = h.seed_until(h.params, 100)
        warehouses = conn.execute("SELECT count(*) FROM public.warehouse").fetchone()[0]
        assert warehouses == 10 and 100 <= len(target) < h.seeded
        assert conn.execute("SELECT count(DISTINCT warehouse_id) FROM public.stock").fetchone()[0] == 10


def test_unmanaged_tables_can_be_created_before_any_test(database_url, tmp_path):
    # For `specql test run`: its lint (plpgsql_check) reads the tables a routine names.
    from specql.harness_tables import create_table
    from specql.testgen import unmanaged_tables

    entities = write_entities(tmp_path / "entities", warehouse=WAREHOUSE, stock=STOCK)
    generate_and_apply(database_url, entities, tmp_path / "out")
    tables = unmanaged_tables(load_project([str(entities)]))
    assert [t["table"] for t in tables] == ["public.stock"]
    with connect(database_url) as conn:
        create_table(conn, tables[0])
        create_table(conn, tables[0])  # again: IF NOT EXISTS
        assert conn.execute("SELECT to_regclass('public.stock') IS NOT NULL").fetchone()[0]


# --- partial records

NOTE = """
name: note
fields:
  id: integer
  body: string
  status: {type: string, default: "new"}
  rank: {type: integer, default: 3}
patterns:
  - name: batch_operations
    operation: upsert_notes
    operation_type: upsert
    upsert_data: {id: ":rec.id", body: ":rec.body", status: ":rec.status", rank: ":rec.rank"}
    conflict_target: id
    data_source: ":rows"
    batch_size: 4
"""


@pytest.fixture
def notes(database_url, tmp_path):
    entities = write_entities(tmp_path / "entities", note=NOTE)
    generate_and_apply(database_url, entities, tmp_path / "out")
    [op] = [op for e in load_project([str(entities)]).entities for op in e.operations]
    with connect(database_url) as conn:
        yield Harness(conn, facts(op))


def test_partial_records_come_in_several_shapes_and_are_checked(notes):
    h = notes
    first = h.records(10)
    h.call({"rows": first})
    before = h.snapshot()
    partial = h.partial(first)
    assert len({tuple(sorted(r)) for r in partial}) >= 2 and all("id" in r for r in partial)
    h.call({"rows": partial})
    assert h.partial_problems(partial, before) == []
    h.conn.execute("UPDATE note SET rank = NULL")  # what an upsert overwriting left-out fields does
    assert any("left out but changed" in p for p in h.partial_problems(partial, before))


def test_absent_fields_are_checked_against_the_declared_defaults(notes):
    h = notes
    sparse = h.sparse(h.records(10))
    assert sparse and all(set(r) == {"id"} for r in sparse)
    h.call({"rows": sparse})
    assert h.default_problems(sparse) == []
    h.conn.execute("UPDATE note SET status = NULL WHERE id = (SELECT min(id) FROM note)")
    assert h.default_problems(sparse) == ["1 rows whose record left out 'status': status is not its default 'new'"]


# --- runs: cancel from a trigger, row changes counted, a lock held by another session

def test_a_cancel_from_the_first_statement_stops_before_the_second_batch(h):
    params, target = h.seed_until(h.params, 251)
    h.record_touches()
    h.cancel_after_first_batch()
    r = h.call(params).result
    assert (r["status"], r["batch_count"], r["processed_records"]) == ("cancelled", 1, 100)
    touches = h.touches()
    assert sorted(touches, key=int) == target[:100] and set(touches.values()) == {1}
    assert h.run_row(r["operation_id"])["status"] == "cancelled"
    h.stop_cancelling()
    assert h.call(params).result["status"] == "completed"
    assert len(h.touches()) == len(target)  # the changes of the second run are counted too


def test_touches_count_each_committed_change_not_rolled_back_ones(h):
    h.seed_until(h.params, 10)
    h.record_touches()
    key = h.conn.execute("SELECT min(id) FROM public.ticket").fetchone()[0]
    h.conn.execute("UPDATE public.ticket SET owner = owner WHERE id = %s", (key,))
    h.conn.execute("UPDATE public.ticket SET owner = owner WHERE id = %s", (key,))
    with h.conn.transaction(force_rollback=True):
        h.conn.execute("UPDATE public.ticket SET owner = owner")
    assert h.touches() == {str(key): 2}


def test_a_held_lock_makes_others_wait_until_it_is_released(h, database_url):
    import time

    import psycopg

    h.seed_until(h.params, 10)
    key = str(h.conn.execute("SELECT min(id) FROM public.ticket").fetchone()[0])
    started = time.monotonic()
    with h.hold_lock(database_url, key, 0.5):
        with pytest.raises(psycopg.errors.LockNotAvailable):
            with h.conn.transaction():
                h.conn.execute("SET LOCAL lock_timeout = '50ms'")
                h.conn.execute("UPDATE public.ticket SET owner = owner WHERE id = %s", (int(key),))
        h.conn.execute("UPDATE public.ticket SET owner = owner WHERE id = %s", (int(key),))  # waits for the release
    assert time.monotonic() - started >= 0.5
