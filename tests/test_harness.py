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
