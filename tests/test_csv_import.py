"""CSV import (data_source: csv_file, SPEC §11): the corpus of good and bad files, each with
its exact expected outcome, on PostgreSQL 18 and 15; `specql run --csv` with its summary and
--rejects file; skip_invalid_rows false stopping the run; the SQL-only path (psql \\copy into
the staging table, then the routine); a resumed import; the staging table's shape.

tests/csv_corpus/NAME.csv (or .csv.gz) is imported with the operation NAME.expected.json
names into tests/csv_corpus/entities/catalog.yaml's table; the JSON holds the run's status,
every row imported (sorted by sku) and every rejected record's error row (line, SQLSTATE,
kind, message, record), or the one-line refusal of a file that cannot be imported at all.
`python tests/test_csv_import.py --regen DATABASE_URL` rewrites the JSON files (review them).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from helpers import generate_and_apply
from specql.csvimport import read_records, split_fields, stage_file
from specql.generate import load_project
from specql.run import RunError, bind_params, execute, find_operation

CORPUS = Path(__file__).parent / "csv_corpus"
ENTITIES = CORPUS / "entities"
CASES = sorted(p.name.split(".")[0] for p in CORPUS.iterdir() if p.name.endswith((".csv", ".csv.gz")))
PSQL = Path("/usr/lib/postgresql/15/bin/psql")


def corpus_file(name: str) -> Path:
    plain = CORPUS / f"{name}.csv"
    return plain if plain.exists() else CORPUS / f"{name}.csv.gz"


def project():
    return load_project([str(ENTITIES)])


def shown(value):
    if isinstance(value, str) and len(value) > 200:
        return f"<{len(value)} characters {value[:1]!r}...>"
    return value if isinstance(value, (str, int, type(None))) else str(value)


def outcome(url: str, name: str) -> dict:
    """Import one corpus file into an emptied table; what happened, as the JSON files hold it."""
    expected_path = CORPUS / f"{name}.expected.json"
    op_name = json.loads(expected_path.read_text())["operation"] if expected_path.exists() else "import_catalog"
    op = find_operation(project(), op_name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE corpus.catalog")
        try:
            r = _run(url, op, corpus_file(name))
        except RunError as exc:
            return {"operation": op_name, "refused": str(exc).replace(str(CORPUS) + "/", "")}
        rows = conn.execute("SELECT name, sku, price, qty, released, note FROM corpus.catalog ORDER BY sku").fetchall()
        errors = conn.execute(
            "SELECT failed_records, sqlstate, error_detail, error_message FROM specql.batch_operation_errors "
            "WHERE operation_id = %s ORDER BY id", (r["operation_id"],)).fetchall()
        left = conn.execute(f"SELECT count(*) FROM corpus.{op_name}_staging").fetchone()[0]
    return {
        "operation": op_name,
        "status": r["status"],
        "counts": {k: r[k] for k in ("total_records", "processed_records", "failed_records", "error_count")},
        "staged_rows_left": left,
        "imported": [[shown(v) for v in row] for row in rows],
        "rejects": [{"line": f["line"], "sqlstate": state, "kind": kind, "message": message,
                     "record": {k: shown(v) for k, v in f["record"].items()}}
                    for f, state, kind, message in errors],
    }


def _run(url: str, op, path: Path, **kw) -> dict:
    from specql.csvimport import run_csv
    return run_csv(url, op, str(path), [], confirm=False, batch_size=None, resume=None, rejects=kw.get("rejects"),
                   execute=execute, bind_params=bind_params, echo=kw.get("echo", lambda m: None))


@pytest.fixture(scope="module")
def corpus_db_pg18(pg_server_url, tmp_path_factory):
    from specql.database import throwaway_database
    with throwaway_database(pg_server_url) as url:
        generate_and_apply(url, ENTITIES, tmp_path_factory.mktemp("gen18"))
        yield url


@pytest.fixture(scope="module")
def corpus_db_pg15(pg15_server_url, tmp_path_factory):
    from specql.database import throwaway_database
    with throwaway_database(pg15_server_url) as url:
        generate_and_apply(url, ENTITIES, tmp_path_factory.mktemp("gen15"))
        yield url


@pytest.fixture(params=["pg18", "pg15"])
def corpus_db(request):
    return request.getfixturevalue(f"corpus_db_{request.param}")


def test_corpus_has_at_least_twenty_bad_files():
    bad = [c for c in CASES if json.loads((CORPUS / f"{c}.expected.json").read_text()).get("rejects")
           or "refused" in json.loads((CORPUS / f"{c}.expected.json").read_text())]
    assert len(bad) >= 20, bad


@pytest.mark.parametrize("name", CASES)
def test_corpus_file(corpus_db, name):
    expected = json.loads((CORPUS / f"{name}.expected.json").read_text())
    assert outcome(corpus_db, name) == expected


# --------------------------------------------------------------------------- the reader alone


def test_reader_follows_copy_csv_rules():
    assert split_fields('a,"b,c",,""', ",") == [("a", False), ("b,c", True), ("", False), ("", True)]
    assert split_fields('ab"c,d"e,f', ",") == [("abc,de", True), ("f", False)]
    assert split_fields('"say ""hi"""', ",") == [('say "hi"', True)]


def test_reader_numbers_lines_of_multiline_records(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b'h1,h2\n"a\nb",1\n\nc,2\n')
    with open(path, "rb") as fh:
        got = [(r.number, r.line, r.text) for r in read_records(fh, ",")]
    assert got == [(1, 1, "h1,h2"), (2, 2, '"a\nb",1'), (3, 5, "c,2")]


# --------------------------------------------------------------------------- specql run


def test_cli_summary_and_rejects_file(database_url, tmp_path):
    generate_and_apply(database_url, ENTITIES, tmp_path / "gen")
    rejects = tmp_path / "rejects.csv"
    cmd = [sys.executable, "-m", "specql.cli", "run", "import_catalog", str(ENTITIES), "--database-url",
           database_url, "--csv", str(CORPUS / "ragged_rows.csv"), "--rejects", str(rejects), "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # completed_with_errors is not completed
    result = json.loads(done.stdout)
    assert (result["status"], result["processed_records"], result["error_count"]) == ("completed_with_errors", 2, 2)
    assert "imported 2 record(s), rejected 2: 2 field count" in done.stderr
    assert rejects.read_text() == (
        "name,sku,price,qty,released,note,reason\n"
        "Bolt,B1,0.25,\"wrong field count: 3 field(s), expected 6\"\n"
        "Cog,C1,2,7,2024-03-15,small,extra,\"wrong field count: 7 field(s), expected 6\"\n")
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("sku,name,price,qty,released,note\nX1,Xylo,1,,,\nX2,Yak,2,,,\nX3,Zed,3,,,\n")
    ok = subprocess.run(cmd[:9] + [str(fresh)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM corpus.catalog").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM corpus.import_catalog_staging").fetchone()[0] == 0


def test_a_gzip_file_read_from_a_pipe_is_imported_whole(database_url, tmp_path):
    # The gzip magic number is peeked at on the open file, which is then read through the
    # decompressor; it was reopened by name, which from a pipe reads what is left of it after
    # the peek's buffer (nothing, or a stream without its start).
    generate_and_apply(database_url, ENTITIES, tmp_path / "gen")
    rows = "".join(f"P{i},Part {i},{i}.5,{i},2024-01-02,note {i}\n" for i in range(1, 3001))
    data = gzip.compress(("sku,name,price,qty,released,note\n" + rows).encode())
    cmd = [sys.executable, "-m", "specql.cli", "run", "import_catalog", str(ENTITIES), "--database-url",
           database_url, "--csv", "/dev/stdin", "--format", "json"]
    done = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert (result["status"], result["processed_records"], result["error_count"]) == ("completed", 3000, 0)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*), min(sku), max(qty) FROM corpus.catalog").fetchone() == (3000, "P1", 3000)


def test_strict_import_stops_and_keeps_staged_rows(database_url, tmp_path):
    generate_and_apply(database_url, ENTITIES, tmp_path / "gen")
    op = find_operation(project(), "import_catalog_strict")
    r = _run(database_url, op, CORPUS / "strict_stops.csv")
    assert r["status"] == "failed"
    with psycopg.connect(database_url) as conn:
        # batch 1 stays; batch 2 (Cog and the rejected Disc) is rolled back; batch 3 never ran
        assert [s for (s,) in conn.execute("SELECT sku FROM corpus.catalog ORDER BY sku")] == ["A1", "B1"]
        staged = conn.execute("SELECT count(*) FROM corpus.import_catalog_strict_staging WHERE _staging_id = %s",
                              (r["staging_id"],)).fetchone()[0]
        assert staged == 5


def test_sql_only_path_with_psql_copy(database_url, tmp_path):
    """README: SET specql.staging_id, \\copy the file into the staging table, call the routine."""
    if not PSQL.exists() and not shutil.which("psql"):
        pytest.skip("psql not installed")
    generate_and_apply(database_url, ENTITIES, tmp_path / "gen")
    load = str(uuid.uuid4())
    script = (f"SET specql.staging_id = '{load}';\n"
              f"\\copy corpus.import_catalog_staging (name, sku, price, qty, released, note) FROM "
              f"'{CORPUS / 'rule_failures.csv'}' WITH (FORMAT csv, HEADER true)\n"
              f"SELECT status, processed_records, error_count FROM corpus.import_catalog(staging_id => '{load}');\n")
    psql = str(PSQL) if PSQL.exists() else shutil.which("psql")
    done = subprocess.run([psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database_url],
                          input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "completed_with_errors|1|2"
    with psycopg.connect(database_url) as conn:
        lines = conn.execute("SELECT (failed_records ->> 'line')::int, error_message FROM specql.batch_operation_errors "
                             "ORDER BY id").fetchall()
    # without _line, a row's line is its position in the load plus the header: right for files
    # without multi-line records
    assert lines == [(2, "validation rule failed: price > 0"), (3, "validation rule failed: price > 0")]


def test_resume_continues_from_the_staged_rows(database_url, tmp_path):
    """A commit_per_batch import that stopped is resumed on its staged rows (the file is not
    read again) and imports every row once."""
    from helpers import write_entities
    ents = write_entities(tmp_path / "e", item="""
        name: item
        schema: res
        fields:
          id: bigint
          n: integer
        patterns:
          - name: batch_operations
            operation: import_items
            data_source: csv_file
            field_mapping: {id: id, n: n}
            transaction: commit_per_batch
            batch_size: 10
    """)
    generate_and_apply(database_url, ents, tmp_path / "gen")
    path = tmp_path / "items.csv"
    path.write_text("id,n\n" + "".join(f"{i},{i}\n" for i in range(1, 101)))
    op = find_operation(load_project([str(ents)]), "import_items")
    with psycopg.connect(database_url, autocommit=True) as conn:
        staged = stage_file(conn, op, path)
        # the 5th batch's 3rd row fails once (a trigger that raises on n = 43 while the flag is set)
        conn.execute("CREATE TABLE res.flag (on_ boolean)")
        conn.execute("INSERT INTO res.flag VALUES (true)")
        conn.execute("""CREATE FUNCTION res.trip() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.n = 43 AND (SELECT on_ FROM res.flag) THEN RAISE EXCEPTION 'tripped' USING ERRCODE = '40001'; END IF;
            RETURN NEW; END $$""")
        conn.execute("CREATE TRIGGER trip BEFORE INSERT ON res.item FOR EACH ROW EXECUTE FUNCTION res.trip()")
        row = conn.execute("CALL res.import_items(staging_id => %s, result => NULL)", (staged.staging_id,)).fetchone()[0]
        first = conn.execute("SELECT (%s::specql.batch_operation_result).status, "
                             "(%s::specql.batch_operation_result).operation_id", (row, row)).fetchone()
        assert first[0] == "failed"
        assert conn.execute("SELECT count(*) FROM res.item").fetchone()[0] == 40
        conn.execute("UPDATE res.flag SET on_ = false")
    path.unlink()  # a resume does not read the file
    bound = bind_params(op, [f"staging_id={staged.staging_id}"])
    r = execute(database_url, op, bound, resume=str(first[1]))
    # the failed batch's error row stays with the run (README, "Resume")
    assert (r["status"], r["processed_records"], r["operation_id"]) == ("completed_with_errors", 100, first[1])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(n) FROM res.item").fetchone() == (100, 100, 5050)
        conn.execute("DELETE FROM res.import_items_staging")
        conn.commit()
    with pytest.raises(RunError, match="SQ004"):
        execute(database_url, op, bound, resume=str(first[1]))


def regen(url: str) -> None:
    generate_and_apply(url, ENTITIES, Path(__import__("tempfile").mkdtemp()))
    for name in CASES:
        got = outcome(url, name)
        (CORPUS / f"{name}.expected.json").write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
        print(name, got.get("status") or got.get("refused"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--regen"]:
        sys.path.insert(0, str(Path(__file__).parent))
        regen(sys.argv[2])
