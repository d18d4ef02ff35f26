"""`specql plan` (issue 15): the batch statements' plans, index warnings, the records a run would
touch, a rolled-back sample and an estimate; the database is the same before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import connect, generate_and_apply, write_entities
from specql.cli import main

ROOT = Path(__file__).resolve().parent.parent

ITEM = """
    name: item
    fields:
      id: uuid
      status: string
      n: integer
    patterns:
      - name: batch_operations
        operation: bump_items
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "status = :status"
        batch_size: 100
      - name: batch_operations
        operation: bump_listed
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "id = ANY(:ids)"
        batch_size: 100
        transaction: commit_per_batch
"""


def snapshot(url: str) -> dict:
    """Every table's rows (specql's runtime tables included), routines, triggers and indexes."""
    with connect(url) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").fetchall()
        out = {t: conn.execute(f"SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                               f"FROM {t} AS t").fetchone()[0] for (t,) in tables}
        out["routines"] = conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                       "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchone()[0]
        out["triggers"] = conn.execute("SELECT count(*) FROM pg_trigger").fetchone()[0]
        out["indexes"] = conn.execute("SELECT count(*) FROM pg_index").fetchone()[0]
    return out


@pytest.fixture
def db(tmp_path, database_url):
    entities = write_entities(tmp_path / "entities", item=ITEM)
    generate_and_apply(database_url, entities, tmp_path / "out")
    with connect(database_url) as conn:
        conn.execute("INSERT INTO public.item (status, n) SELECT CASE WHEN g % 4 = 0 THEN 'new' ELSE 'old' END, g "
                     "FROM generate_series(1, 2000) g")
        conn.execute("ANALYZE public.item")
    return database_url, entities


def plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


def test_a_condition_walk_is_planned_sampled_and_estimated_and_nothing_changes(db):
    url, entities = db
    before = snapshot(url)
    result = plan("bump_items", str(entities), "--database-url", url, "--param", "status=new", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["records"], report["batches"], report["batch_size"]) == (500, 5, 100)
    queries = [s["query"] for s in report["statements"]]
    assert any(q.lstrip().upper().startswith("UPDATE") for q in queries), queries
    assert all(s["plan"].get("Node Type") for s in report["statements"])
    # status has no index: the condition is checked row by row, and plan says so
    assert any("not index-backed" in w for w in report["warnings"]), report["warnings"]
    assert report["sample"]["batches"] >= 1 and report["sample"]["seconds"] > 0
    assert report["estimate_seconds"] > 0
    assert snapshot(url) == before


def test_an_index_removes_the_warning(db):
    url, entities = db
    with connect(url) as conn:
        conn.execute("CREATE INDEX item_status_idx ON public.item (status, id)")
        conn.execute("ANALYZE public.item")
    result = plan("bump_items", str(entities), "--database-url", url, "--param", "status=new", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not [w for w in report["warnings"] if "Seq Scan" in w], report["warnings"]


def test_a_procedure_is_sampled_by_its_first_batch_and_the_text_report(db):
    url, entities = db
    with connect(url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id::text FROM public.item ORDER BY n LIMIT 250")]
    before = snapshot(url)
    result = plan("bump_listed", str(entities), "--database-url", url, "--param", f"ids={json.dumps(ids)}")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "records to touch: 250  batches: 3" in out, out
    assert "batch statement 1:" in out and "plan:" in out
    assert "sample: 3 batch(es)" in out and "estimate: 3 batches" in out
    assert "nothing was changed" in out
    assert snapshot(url) == before


def test_misuse_is_one_line(db):
    url, entities = db
    result = plan("bump_items", str(entities), "--database-url", url, "--param", "stat=new")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "specql plan: --param stat: bump_items has no parameter 'stat' (did you mean 'status'?)"]


def test_the_example_entities(tmp_path, database_url):
    generate_and_apply(database_url, ROOT / "entities" / "user.yaml", tmp_path / "out")
    with connect(database_url) as conn:
        conn.execute("INSERT INTO public.\"user\" (email, status) SELECT 'u' || g || '@x.org', 'active' "
                     "FROM generate_series(1, 300) g")
        ids = [r[0] for r in conn.execute("SELECT id::text FROM public.\"user\" ORDER BY id")]
    before = snapshot(database_url)
    result = plan("bulk_update_user_status", str(ROOT / "entities" / "user.yaml"), "--database-url", database_url,
                  "--param", f"user_ids={json.dumps(ids)}", "--param", "new_status=gone", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["records"] == 300 and report["statements"] and report["estimate_seconds"] > 0
    assert snapshot(database_url) == before
