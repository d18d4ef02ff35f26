"""bench/pieces.py takes issue 10's bookkeeping out of the generated routines by textual edits.

When the templates change, an edit that silently stops matching would make a "piece" measure
nothing; these tests fail instead, and check that each piece removes what it names (no database).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import instructions  # noqa: E402
import pieces  # noqa: E402
import run as B  # noqa: E402
from variants import routine_text  # noqa: E402

from specql.generate import generate  # noqa: E402

ROUTINES = [routine for _label, routine, _target in B.CASES.values()]


@pytest.fixture(scope="module")
def migrations(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_gen")
    generate([str(BENCH / "entities")], out)
    return out / "migrations"


def loop_of(text: str) -> str:
    return text.partition("<<batches>>")[2]


@pytest.mark.parametrize("routine", ROUTINES)
def test_every_piece_applies_to_every_bench_routine(migrations, routine):
    base = routine_text(migrations, routine)
    for piece in pieces.PIECES:
        if piece in pieces.PROCEDURE_ONLY:
            continue
        sql = pieces.piece_sql(base, routine, piece, 1000)
        assert f"FUNCTION bench.{routine}__{piece}(" in sql
        assert f"{routine}.batch_size" not in sql.replace(f"{routine}__{piece}.", "")
        assert sql.replace(f"{routine}__{piece}", routine) != base, piece


@pytest.mark.parametrize("routine", ROUTINES)
def test_all_pieces_takes_the_bookkeeping_out_of_the_batch_loop(migrations, routine):
    sql = pieces.piece_sql(routine_text(migrations, routine), routine, "all_pieces", 1000)
    loop = loop_of(sql)
    assert "batch_operation_cancellations" not in sql
    assert not re.search(r"\b_batch_size\b", loop)
    assert "IF _progress" not in loop
    assert "backend_pid" not in sql
    assert "LOOP\n" in loop  # the batch loop itself stays
    assert "        LOOP\n            BEGIN\n" not in loop


def test_a_piece_that_no_longer_matches_stops_with_its_name():
    with pytest.raises(SystemExit, match="no_cancel_probe"):
        pieces.piece_sql("CREATE OR REPLACE FUNCTION bench.x() ... <<batches>> LOOP END LOOP", "x",
                         "no_cancel_probe", 1000)


def test_instructions_insert_script_starts_from_an_empty_table():
    check, expected = instructions.expected_check("insert", 5000)
    assert expected == 5000
    text = instructions.script(instructions.SIDES["insert"][1], check, with_rows=False)
    assert "INSERT INTO bench.bench_item SELECT * FROM bench.seed" not in text
    assert "DO $do$ DECLARE r jsonb" in text
    assert instructions.expected_check("delete", 5000)[1] == 0


def test_instructions_has_a_procedure_call_for_every_case():
    assert set(instructions.PROCEDURE_CALLS) == set(instructions.SIDES)
    for case, call in instructions.PROCEDURE_CALLS.items():
        routine = B.CASES[case][1]
        assert f"CALL bench.{routine}(" in call and "result => res" in call
        assert "(SELECT" not in call.partition("CALL")[2]  # CALL arguments cannot hold a subquery


def test_procedure_pieces_apply_to_a_commit_per_batch_procedure(tmp_path):
    text = (BENCH / "entities" / "bench_item.yaml").read_text()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "bench_item.yaml").write_text(
        text.replace("    error_handling: stop_on_error\n",
                     "    error_handling: stop_on_error\n    transaction: commit_per_batch\n"))
    generate([str(tmp_path / "e")], tmp_path / "g")
    base = routine_text(tmp_path / "g" / "migrations", "bench_update_by_ids")
    assert "CREATE OR REPLACE PROCEDURE bench.bench_update_by_ids(" in base
    no_update = pieces.piece_sql(base, "bench_update_by_ids", "no_run_row_update", 1000)
    assert "PROCEDURE bench.bench_update_by_ids__no_run_row_update(" in no_update
    assert no_update.count("UPDATE specql.batch_operation_runs") == base.count("UPDATE specql.batch_operation_runs") - 1
    assert "hash_array_extended(" not in pieces.piece_sql(base, "bench_update_by_ids", "no_params_hash", 1000)
    assert "hash_array_extended(" in base
