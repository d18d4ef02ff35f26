"""A large jsonb data_source from a file (issue 12 part 4, SPEC §11): `specql run OP --json FILE`
stages a JSON array or JSON lines file (gzip too) with COPY and the routine reads the staged load
(staging_id => ...) through the same statements as the jsonb argument. Checked here: the file
imports exactly what the argument imports (rows and error rows) on PostgreSQL 18 and 15; a bad
file is refused with its place in the file and nothing staged; an import whose backend is
terminated mid-run resumes on its staged load (the file gone) without a duplicate; the CLI's
summary and --rejects file; psql's \\copy path. Memory at 1M records: bench/json_bench.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import generate_and_apply, write_entities
from specql.generate import load_project
from specql.jsonimport import run_json, stage_file
from specql.run import RunError, bind_params, execute, find_operation

ITEM = """
    name: item
    schema: js
    fields:
      id: bigint
      name: string
      price: decimal
      tags: jsonb
      seen: timestamp
    patterns:
      - name: batch_operations
        operation: load_items
        operation_type: insert
        data_source: :rows
        insert_data:
          id: :r.id
          name: :r.name
          price: :r.price
          tags: :r.tags
          seen: NOW()
        batch_size: 7
        error_handling: collect_errors
      - name: batch_operations
        operation: load_items_strict
        operation_type: upsert
        data_source: :rows
        upsert_data:
          id: :r.id
          name: :r.name
          price: :r.price
        conflict_target: id
        transaction: commit_per_batch
        batch_size: 10
      - name: batch_operations
        operation: load_items_once
        operation_type: insert
        data_source: :rows
        insert_data:
          id: :r.id
          name: :r.name
          price: :r.price
        error_handling: stop_on_error
"""


def records(n: int = 50) -> list[dict]:
    """Records with what a JSON file can hold awkwardly: quotes, backslashes, tabs, line breaks,
    non-ASCII, nested values, a missing field, and one record whose price does not cast."""
    out = []
    for i in range(1, n + 1):
        rec = {"id": i, "name": f'item "{i}" \\ tab\there\nline €', "price": f"{i}.5", "tags": {"k": [i, None]}}
        if i % 9 == 0:
            del rec["tags"]
        out.append(rec)
    out[16]["price"] = "not a number"  # record 17 (index 16) is rejected, on both paths
    return out


def write(path: Path, recs: list[dict], shape: str) -> Path:
    if shape == "array":
        text = json.dumps(recs, indent=2, ensure_ascii=False)
    elif shape == "array_one_line":
        text = json.dumps(recs, ensure_ascii=False)
    else:
        text = "\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + ("\n\n" if i == 3 else "\n")
                                  for i, r in enumerate(recs))
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project_db(database_url_any, tmp_path):
    ents = write_entities(tmp_path / "e", item=ITEM)
    generate_and_apply(database_url_any, ents, tmp_path / "gen")
    return database_url_any, load_project([str(ents)])


def _run(url, op, path, **kw):
    return run_json(url, op, str(path), kw.pop("params", []), confirm=False, batch_size=None, resume=kw.pop("resume", None),
                    rejects=kw.pop("rejects", None), execute=execute, bind_params=bind_params,
                    echo=kw.pop("echo", lambda m: None))


def table_and_errors(conn, operation_id):
    rows = conn.execute("SELECT id, name, price, tags FROM js.item ORDER BY id").fetchall()
    errors = conn.execute("SELECT batch_number, sqlstate, error_message, failed_records "
                          "FROM specql.batch_operation_errors WHERE operation_id = %s ORDER BY id",
                          (operation_id,)).fetchall()
    return rows, errors


@pytest.mark.parametrize("shape,name", [("lines", "items.jsonl"), ("array", "items.json"),
                                        ("array_one_line", "items.json"), ("lines", "items.jsonl.gz"),
                                        ("array", "items.json.gz")])
def test_file_imports_what_the_argument_imports(project_db, tmp_path, shape, name):
    url, project = project_db
    op = find_operation(project, "load_items")
    recs = records()
    with psycopg.connect(url, autocommit=True) as conn:
        arg = conn.execute("SELECT * FROM js.load_items(rows => %s::jsonb)", (json.dumps(recs),)).fetchone()
        by_arg = table_and_errors(conn, arg[0])
        conn.execute("TRUNCATE js.item")
        messages = []
        r = _run(url, op, write(tmp_path / name, recs, shape), echo=messages.append)
        by_file = table_and_errors(conn, r["operation_id"])
        left = conn.execute("SELECT count(*) FROM js.load_items_staging").fetchone()[0]
    assert (r["status"], r["total_records"], r["processed_records"], r["failed_records"]) == \
        ("completed_with_errors", 50, 49, 1)
    assert len(by_file[0]) == 49 and by_file[0] == by_arg[0]
    # the same error row, and the staged one also says where the record is in the file
    assert len(by_file[1]) == 1
    (batch, state, message, failed), = by_file[1]
    assert (batch, state, message) == by_arg[1][0][:3] == (3, "22P02", 'invalid input syntax for type numeric: "not a number"')
    line = failed[0].pop("line")
    assert failed == by_arg[1][0][3] == [{"index": 16, "record": recs[16]}]
    text = gzip.decompress((tmp_path / name).read_bytes()).decode() if name.endswith(".gz") else (tmp_path / name).read_text()
    lines = text.splitlines()
    if shape == "lines":
        assert line == 18  # record 17: one blank line (after record 4) before it
        assert '"not a number"' in lines[line - 1]
    elif shape == "array":  # the line its element starts on (indent 2: "  {")
        assert lines[line - 1] == "  {" and '"not a number"' in "\n".join(lines[line:line + 8])
        assert '"not a number"' not in "\n".join(lines[:line])
    else:
        assert line == 1
    assert left == 0  # a finished import drops its staged records
    assert messages[-1] == "imported 49 record(s), rejected 1: 1 error row(s) SQLSTATE 22P02"


BAD = [
    ("bad.jsonl", '{"id": 1}\n\n{"id": 2, name: "x"}\n', r"bad.jsonl:3:11: invalid input syntax for type json"),
    ("bad.json", '[{"id": 1},\n {"id": 2,}]', r"bad.json:2:10: Expecting property name"),
    ("scalar.json", '[{"id": 1},\n  "two"]', r"scalar.json:2:3: element 2 of the array is a JSON string, not an object"),
    ("scalar.jsonl", '{"id": 1}\n[2]\n', r"scalar.jsonl:2:1: not a JSON object"),
    ("open.json", '[{"id": 1},\n {"id": 2}\n', r"open.json:3:1: the array is never closed"),
    ("extra.json", '[{"id": 1}]\n[]', r"extra.json:2:1: extra data after the array"),
    ("utf8.jsonl", b'{"id": 1}\n{"id": 2, "name": "\xff"}\n', r'utf8.jsonl:2:\d+: invalid byte sequence for encoding "UTF8"'),
    ("text.json", 'id,name\n1,x\n', r"text.json:1: expected a JSON array of objects"),
    ("nul.jsonl", '{"id": 1}\n{"id": 2, "name": "a\\u0000b"}\n', r"nul.jsonl:2:1: unsupported Unicode escape sequence"),
    ("nul.json", '[{"id": 1},\n\n {"id": 2, "name": "a\\u0000b"}]', r"nul.json:3: element 2 of the array \(it starts on this line\): unsupported Unicode"),
]


@pytest.mark.parametrize("name,content,error", BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_located_and_nothing_staged(database_url, tmp_path, name, content, error):
    ents = write_entities(tmp_path / "e", item=ITEM)
    generate_and_apply(database_url, ents, tmp_path / "gen")
    op = find_operation(load_project([str(ents)]), "load_items")
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunError, match=error):
        _run(database_url, op, path)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM js.load_items_staging), (SELECT count(*) FROM js.item), "
                            "(SELECT count(*) FROM specql.batch_operation_runs)").fetchone() == (0, 0, 0)


def test_terminated_import_resumes_on_its_staged_load(database_url, tmp_path):
    """The backend running a commit_per_batch import is terminated in its 5th batch; the
    resume reads the staged load (the file is gone) and every record is imported once."""
    ents = write_entities(tmp_path / "e", item=ITEM)
    generate_and_apply(database_url, ents, tmp_path / "gen")
    op = find_operation(load_project([str(ents)]), "load_items_strict")
    path = write(tmp_path / "items.jsonl", [{"id": i, "name": f"n{i}", "price": i} for i in range(1, 101)], "lines")
    with psycopg.connect(database_url, autocommit=True) as conn:
        staged = stage_file(conn, op, path)
        assert staged.records == 100
        # the upsert of id 43 (5th batch) waits for a lock this session holds
        conn.execute("""CREATE FUNCTION js.hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.id = 43 THEN PERFORM pg_advisory_xact_lock(4343); END IF; RETURN NEW; END $$""")
        conn.execute("CREATE TRIGGER hold BEFORE INSERT ON js.item FOR EACH ROW EXECUTE FUNCTION js.hold()")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(4343)")
            box = {}

            def call():
                try:
                    with psycopg.connect(database_url, autocommit=True) as c:
                        box["pid"] = c.info.backend_pid
                        c.execute("CALL js.load_items_strict(rows => NULL, staging_id => %s, result => NULL)",
                                  (staged.staging_id,))
                except psycopg.Error as exc:
                    box["error"] = exc

            thread = threading.Thread(target=call)
            thread.start()
            for _ in range(200):
                conn.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is read once per transaction
                waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND query LIKE 'CALL js.load_items_strict%%'").fetchone()[0]
                if waiting:
                    break
                time.sleep(0.05)
            assert waiting == 1, (box, conn.execute("SELECT pid, state, wait_event_type, wait_event, left(query, 60) "
                                                    "FROM pg_stat_activity WHERE datname = current_database()").fetchall())
            conn.execute("SELECT pg_terminate_backend(%s)", (box["pid"],))
            thread.join(10)
        assert isinstance(box.get("error"), psycopg.OperationalError)
        run = conn.execute("SELECT s.operation_id, s.state FROM specql.batch_operation_status AS s").fetchone()
        assert run[1] == "abandoned"
        assert conn.execute("SELECT count(*) FROM js.item").fetchone()[0] == 40
    path.unlink()  # a resume does not read the file
    r = _run(database_url, op, None, resume=str(run[0]))
    assert (r["status"], r["operation_id"], r["processed_records"], r["total_records"]) == ("completed", run[0], 100, 100)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(price) FROM js.item").fetchone() == (100, 100, 5050)
        # one log row per batch: none of the ten batches ran twice
        assert conn.execute("SELECT count(*), count(DISTINCT batch_number) FROM specql.batch_operation_logs "
                            "WHERE operation_id = %s", (run[0],)).fetchone() == (10, 10)
        assert conn.execute("SELECT count(*) FROM js.load_items_staging").fetchone()[0] == 0
    with pytest.raises(RunError, match="SQ004"):  # a completed run is not resumed
        _run(database_url, op, None, resume=str(run[0]))


def test_cli_summary_and_rejects(project_db, tmp_path):
    url, _ = project_db
    path = write(tmp_path / "items.json", records(), "array")
    out = tmp_path / "rejects.jsonl"
    proc = subprocess.run([str(Path(__file__).parent.parent / ".venv/bin/specql"), "run", "load_items",
                           str(tmp_path / "e"), "--database-url", url, "--json", str(path), "--rejects", str(out),
                           "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # completed_with_errors
    result = json.loads(proc.stdout)
    assert (result["status"], result["processed_records"]) == ("completed_with_errors", 49)
    assert "staged 50 record(s)" in proc.stderr and "imported 49 record(s), rejected 1" in proc.stderr
    rejected = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["record"]["price"], r["reason"]) for r in rejected] == \
        [(16, "not a number", 'invalid input syntax for type numeric: "not a number"')]
    lines = path.read_text().splitlines()
    assert lines[rejected[0]["line"] - 1] == "  {" and '"not a number"' in "\n".join(lines[rejected[0]["line"]:][:8])


@pytest.mark.parametrize("shape", ["lines", "array"])
@pytest.mark.parametrize("n", [50, 3000])  # one read of the shape check holds all of it / does not
def test_a_file_read_from_a_pipe_is_staged_whole(project_db, tmp_path, shape, n):
    # `--json /dev/stdin`: the file's shape was told from a first read and the file opened again
    # by name to be staged, which from a pipe read what that first read had left: no record (50),
    # or the records after its 64 kB (3000). It is now read once, the shape told from its start.
    url, _ = project_db
    data = write(tmp_path / "items.json.gz" if n == 3000 and shape == "array" else tmp_path / "items.json",
                 records(n), shape).read_bytes()
    proc = subprocess.run([str(Path(__file__).parent.parent / ".venv/bin/specql"), "run", "load_items",
                           str(tmp_path / "e"), "--database-url", url, "--json", "/dev/stdin", "--format", "json"],
                          input=data, capture_output=True, timeout=120)
    assert proc.returncode == 1, proc.stderr.decode()  # completed_with_errors: record 17 does not cast
    result = json.loads(proc.stdout)
    assert (result["status"], result["processed_records"], result["failed_records"]) == (
        "completed_with_errors", n - 1, 1)
    assert f"staged {n:,} record(s)" in proc.stderr.decode()


def test_argument_and_staging_id_together_are_refused(project_db):
    url, _ = project_db
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InvalidParameterValue,
                                                                      match="pass rows or staging_id, not both"):
        conn.execute("SELECT * FROM js.load_items(rows => '[]', staging_id => gen_random_uuid())")


def test_sql_only_path_with_psql_copy(database_url, tmp_path):
    """psql's \\copy of a JSON lines file into the staging table (CSV format with quote and
    delimiter characters no JSON line holds, so backslashes stay as they are), then the routine."""
    psql = Path("/usr/lib/postgresql/15/bin/psql")
    if not psql.exists():
        pytest.skip("psql not installed")
    ents = write_entities(tmp_path / "e", item=ITEM)
    generate_and_apply(database_url, ents, tmp_path / "gen")
    recs = [r for r in records(20) if r["price"] != "not a number"]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    script = (f"SET specql.staging_id = 'a0000000-0000-0000-0000-000000000001';\n"
              f"\\copy js.load_items_staging (record) FROM '{path}' WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')\n"
              f"SELECT status, processed_records FROM js.load_items(rows => NULL, "
              f"staging_id => 'a0000000-0000-0000-0000-000000000001');\n")
    proc = subprocess.run([str(psql), database_url, "-v", "ON_ERROR_STOP=1", "-At"], input=script,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"completed|{len(recs)}"
    with psycopg.connect(database_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM js.item ORDER BY id")]
    assert names == [r["name"] for r in recs]


def test_names_the_staged_path_needs_are_checked(tmp_path):
    """A parameter called staging_id, or an operation whose <operation>_staging name is too long
    for PostgreSQL, is refused at validate time (the routine adds both names)."""
    from specql.diagnostics import SpecError
    clash = ITEM.replace("data_source: :rows\n        insert_data:\n          id: :r.id",
                         "data_source: :rows\n        insert_data:\n          id: :staging_id", 1)
    long_name = ITEM.replace("operation: load_items_strict", "operation: " + "l" * 60, 1)
    for text, message in ((clash, "parameter 'staging_id' is the argument specql adds"),
                          (long_name, "is too long for its staging table")):
        ents = write_entities(tmp_path / str(len(message)), item=text)
        with pytest.raises(SpecError) as exc:
            load_project([str(ents)])
        assert message in str(exc.value)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_array_reader_across_window_boundaries(tmp_path, monkeypatch, chunk):
    """The array reader's window moves forward chunk by chunk: every element (one split across
    any number of chunks, a multi-byte character cut in two) comes out whole, with its line."""
    import specql.jsonimport as ji
    monkeypatch.setattr(ji, "READ_CHUNK", chunk)
    recs = [{"id": i, "s": "é€😀 \\ \" \t" * (i % 4), "big": "x" * (300 if i == 5 else 1), "n": 12345.678e3}
            for i in range(1, 13)]
    text = json.dumps(recs, indent=1, ensure_ascii=False)
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    with open(path, "rb") as fh:
        rows = [line.rstrip(b"\n").split(b"\t", 2) for line in ji.array_rows(fh, path)]
    assert [int(r[0]) for r in rows] == list(range(1, 13))
    lines = text.splitlines()
    for rec, (_, line, body) in zip(recs, rows):
        unescaped = body.decode().replace("\\\\", "\x00").replace("\\n", "\n").replace("\\t", "\t").replace("\x00", "\\")
        assert json.loads(unescaped) == rec
        assert lines[int(line) - 1] == " {" and f'"id": {rec["id"]},' in lines[int(line)]
    bad = tmp_path / "b.json"
    bad.write_text(text[:-40] + "]", encoding="utf-8")
    with open(bad, "rb") as fh, pytest.raises(RunError, match=r"b\.json:\d+:\d+: "):
        list(ji.array_rows(fh, bad))


def test_a_function_run_that_fails_leaves_no_staged_load(project_db, tmp_path):
    """Only a procedure's run can be resumed: a failed run of a function drops its load."""
    url, project = project_db
    op = find_operation(project, "load_items_once")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE js.item ADD CONSTRAINT cheap CHECK (price < 10)")
    r = _run(url, op, write(tmp_path / "items.jsonl", [{"id": 1, "name": "x", "price": 50}], "lines"))
    assert (r["status"], r["processed_records"]) == ("failed", 0)
    strict = find_operation(project, "load_items_strict")
    r = _run(url, strict, write(tmp_path / "s.jsonl", [{"id": 2, "name": "x", "price": 50}], "lines"))
    assert r["status"] == "failed"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM js.load_items_once_staging").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM js.load_items_strict_staging").fetchone()[0] == 1  # for its resume
