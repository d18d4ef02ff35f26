"""Issue 8 on a real server: partial records keep data, edge inputs give clear errors, and
hostile names stay text in the generated SQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from helpers import call, connect, generate_and_apply, write_entities
from specql.generate import generate
from specql.migrate import migrate
from specql.reserved import routine_locals

ROOT = Path(__file__).resolve().parent.parent

ACCOUNT = """
name: account
fields:
  id: integer
  owner: string
  status: {type: string, default: "active"}
  tier: string
  balance: integer
patterns:
  - name: batch_operations
    operation: upsert_accounts
    operation_type: upsert
    upsert_data:
      id: ":rec.id"
      owner: ":rec.owner"
      status: ":rec.status"
      tier: ":rec.tier"
      balance: ":rec.balance"
    conflict_target: id
    data_source: ":rows"
    batch_size: 2
  - name: batch_operations
    operation: upsert_accounts_collect
    operation_type: upsert
    upsert_data:
      id: ":rec.id"
      owner: ":rec.owner"
      balance: ":rec.balance"
    conflict_target: id
    data_source: ":rows"
    error_handling: collect_errors
  - name: batch_operations
    operation: close_accounts
    operation_type: update
    update_data: {status: closed}
    where_condition: "status = :from_status"
"""

NOTE = """
name: note
fields:
  id: uuid
  body: string
  status: {type: string, default: "new"}
  pinned: {type: boolean, default: false}
patterns:
  - name: batch_operations
    operation: insert_notes
    operation_type: insert
    insert_data:
      id: ":rec.id"
      body: ":rec.body"
      status: ":rec.status"
      pinned: ":rec.pinned"
    data_source: ":rows"
"""


@pytest.fixture
def db(tmp_path, database_url_any):
    entities = write_entities(tmp_path / "entities", account=ACCOUNT, note=NOTE)
    generate_and_apply(database_url_any, entities, tmp_path / "out")
    with connect(database_url_any) as conn:
        yield conn


def rows(conn, table: str) -> dict:
    return {r[0]: r[1:] for r in conn.execute(f"SELECT id, owner, status, tier, balance FROM {table} ORDER BY id")}


def test_upsert_updates_only_the_columns_a_record_carries(db):
    db.execute("INSERT INTO account VALUES (5, 'ann', 'vip', 'gold', 1), (8, 'bob', 'active', 'iron', 2)")
    records = [{"id": 5, "balance": 7},                       # existing: only balance changes
               {"id": 6, "owner": "cy", "status": "new", "tier": "tin", "balance": 1},
               {"id": 7, "balance": 3},                       # new: status takes its default
               {"id": 8, "tier": None}]                       # an explicit null is written
    result = call(db, "public.upsert_accounts", rows=json.dumps(records))
    assert (result["status"], result["processed_records"], result["batch_count"]) == ("completed", 4, 2)
    assert rows(db, "account") == {
        5: ("ann", "vip", "gold", 7),
        6: ("cy", "new", "tin", 1),
        7: (None, "active", None, 3),
        8: ("bob", "active", None, 2),
    }


def test_partial_records_also_keep_data_when_isolated_record_by_record(db):
    db.execute("ALTER TABLE account ADD CONSTRAINT small CHECK (balance < 100)")
    db.execute("INSERT INTO account VALUES (1, 'ann', 'vip', 'gold', 1)")
    records = [{"id": 1, "balance": 5}, {"id": 2, "balance": 500}, {"id": 3, "owner": "dee"}]
    result = call(db, "public.upsert_accounts_collect", rows=json.dumps(records))
    assert (result["status"], result["processed_records"], result["failed_records"]) == \
        ("completed_with_errors", 2, 1)
    assert rows(db, "account") == {1: ("ann", "vip", "gold", 5), 3: ("dee", "active", None, None)}


def test_insert_takes_declared_defaults_for_absent_fields(db):
    records = [{"body": "a"}, {"body": "b", "status": None, "pinned": True}]
    result = call(db, "public.insert_notes", rows=json.dumps(records))
    assert (result["status"], result["processed_records"]) == ("completed", 2)
    got = db.execute("SELECT body, status, pinned, id IS NOT NULL FROM note ORDER BY body").fetchall()
    assert got == [("a", "new", False, True), ("b", None, True, True)]


def test_a_walk_that_matches_nothing_counts_zero_not_null(db):
    result = call(db, "public.close_accounts", from_status="nobody")
    assert (result["status"], result["total_records"], result["processed_records"]) == ("completed", 0, 0)


def test_a_jsonb_scalar_as_data_source_names_the_parameter(db):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="rows must be a jsonb array of objects, "
                                                                   "not a jsonb number"):
        call(db, "public.upsert_accounts", rows="5")


def test_every_name_a_generated_routine_declares_is_refused_as_a_column(tmp_path, monkeypatch):
    """The refused names are read from the templates: every local of every routine must be among them."""
    monkeypatch.chdir(ROOT)
    entities = write_entities(tmp_path / "entities", account=ACCOUNT, note=NOTE)
    shutil.copytree(ROOT / "entities", tmp_path / "entities", dirs_exist_ok=True)
    declared = set()
    for path in generate([str(tmp_path / "entities")], tmp_path / "out").written:
        for block in re.findall(r"^DECLARE\n(.*?)^BEGIN$", path.read_text("utf-8"), re.S | re.M):
            declared.update(re.findall(r"^\s+(_\w+)\s", block, re.M))
    assert {"_upto", "_keys", "_shape", "_result"} <= declared
    assert declared <= routine_locals()


@pytest.mark.parametrize("hostile", ["a\nDROP TABLE public.canary;\n--", "b\rDROP TABLE public.canary;--",
                                     'c"""\nimport os\n#'])
def test_a_hostile_entity_file_name_stays_text(tmp_path, database_url, hostile):
    """A newline in the file's own name must not end the comment that names it (SQL and tests)."""
    folder = tmp_path / "entities"
    folder.mkdir()
    (folder / f"{hostile}.yaml").write_text(ACCOUNT, "utf-8")
    out = tmp_path / "out"
    written = generate([str(folder)], out).written
    with connect(database_url) as conn:
        conn.execute("CREATE TABLE public.canary (id int)")
    lines: list[str] = []
    assert migrate(out, database_url, echo=lines.append) == 0, lines
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    if Path(psql).exists():
        for path in sorted(written):
            subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-f", str(path)],
                           check=True, capture_output=True)
    with connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.canary') IS NOT NULL").fetchone()[0]
    for path in written:
        for line in path.read_text("utf-8").splitlines():
            assert "DROP TABLE public.canary" not in line or line.lstrip().startswith("--")


def test_a_hostile_entity_file_name_stays_text_in_generated_tests(tmp_path):
    from specql.testgen import generate_tests

    folder = tmp_path / "entities"
    folder.mkdir()
    (folder / 'c"""\nimport os\n#\\N.yaml').write_text(ACCOUNT, "utf-8")
    written = [p for p in generate_tests([str(folder)], tmp_path / "out").written if p.suffix == ".py"]
    assert written
    for path in written:
        compile(path.read_text("utf-8"), str(path), "exec")  # a syntax error would fail here
        assert "\nimport os" not in path.read_text("utf-8")


def test_test_run_names_a_missing_function_once_before_running_tests(tmp_path, pg_server_url, monkeypatch):
    """The seed calls CURRENT_USER_HAS_PERMISSION(...): a database without it is reported
    by name, at the entity's line, instead of every generated test failing without a word of why."""
    from specql.generate import load_project
    from specql.testrun import run

    text = ACCOUNT.replace('    where_condition: "status = :from_status"\n',
                           '    where_condition: "status = :from_status"\n'
                           '    preconditions: ["CURRENT_USER_HAS_PERMISSION(\'accounts.close\')"]\n')
    entities = write_entities(tmp_path / "entities", account=text)
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    code = run(load_project(["entities"]), database_url=pg_server_url, junit_xml=None, keyword=None,
               echo=lines.append)
    assert code == 1
    missing = [line for line in lines if "does not exist" in line]
    assert missing == [
        "entities/account.yaml:37:22: error: function current_user_has_permission() does not exist in the "
        "database the tests run on (operation close_accounts calls it); create it before the specql "
        "migrations, e.g. in a migration of your own, or the routine fails at every call"], lines
    assert not any("passed" in line for line in lines)


def test_a_default_expression_is_parenthesized_so_it_parses(tmp_path, database_url):
    """DEFAULT takes a restricted expression: `DEFAULT x IS NOT NULL` is a syntax error unless
    parenthesized (found by the fuzzer: generate exited 0 with SQL that did not parse)."""
    text = NOTE.replace('pinned: {type: boolean, default: false}',
                        'pinned: {type: boolean, default: {sql: "now() IS NOT NULL"}}')
    entities = write_entities(tmp_path / "entities", note=text)
    generate_and_apply(database_url, entities, tmp_path / "out")
    with connect(database_url) as conn:
        result = call(conn, "public.insert_notes", rows=json.dumps([{"body": "a"}]))
        assert result["status"] == "completed"
        assert conn.execute("SELECT pinned FROM note").fetchone() == (True,)
        conn.execute("INSERT INTO note (body) VALUES ('b')")
        assert conn.execute("SELECT pinned FROM note WHERE body = 'b'").fetchone() == (True,)
