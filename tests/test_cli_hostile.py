"""Hostile input to the runtime commands (`specql run`, `status`, `plan`, `migrate`) and Ctrl-C
at any moment of `specql run`: one clear line naming the argument and exit 1 (click's usage
errors too, SPEC §1), never a traceback or an internal error, nothing run or written; a Ctrl-C
leaves no run `running` and the exit code says what became of the run.

Real processes: the installed `specql` script in a subprocess, SIGINT sent to it, on a database
with the entities/ examples migrated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from helpers import connect, generate_and_apply
from specql import database

ROOT = Path(__file__).resolve().parent.parent
SPECQL = Path(sys.executable).parent / "specql"
REPRICE = ["reprice_category", "--param", "category_id=7", "--param", "new_price=2"]  # commit_per_batch procedure
USERS = ["bulk_update_user_status", "--param", "new_status=x"]  # a function, uuid[] user_ids
UNREACHABLE = "postgresql://someone:wrong@127.0.0.1:1/nowhere"


@pytest.fixture(scope="module")
def db(pg_server_url, tmp_path_factory):
    with database.throwaway_database(pg_server_url) as url:
        generate_and_apply(url, ROOT / "entities", tmp_path_factory.mktemp("generated"))
        with connect(url) as conn:
            conn.execute("INSERT INTO public.product (name, price, category_id) SELECT 'p' || g, 1, 7 "
                         "FROM generate_series(1, 400) g")
        yield url


def specql(*args: str, url: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [str(SPECQL), *args] + (["--database-url", url] if url else [])
    return subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def runs(url: str) -> list[tuple[str, str, str]]:
    with connect(url) as conn:
        return conn.execute("SELECT operation_id::text, operation, status FROM specql.batch_operation_runs "
                            "ORDER BY started_at").fetchall()


def staged(url: str) -> int:
    """Rows in every staging table (a refused import stages nothing)."""
    with connect(url) as conn:
        tables = conn.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                              "WHERE tablename LIKE '%staging%'").fetchall()
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for (t,) in tables)


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "internal error" not in err, err
    assert result.returncode == 1, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Usage: ", "Try '"))]
    assert len(lines) == 1, err  # one line (click's usage errors add their Usage and Try lines)
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


# --------------------------------------------------------------------------- bad input, refused


def _files(tmp: Path) -> dict[str, str]:
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00")
    (tmp / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp / "ok.csv").write_text("name,price,category_id\nx,1,1\n")
    (tmp / "ok.json").write_text('[{"email": "a@b.org", "name": "n"}]')
    (tmp / "adir").mkdir(exist_ok=True)
    if not (tmp / "fifo").exists():
        os.mkfifo(tmp / "fifo")
    return {"tmp": str(tmp)}


REFUSED = {
    # name: (argv with {tmp} for the files, the words the line must have)
    "unknown operation": (["run", "no_such_op"], ["unknown operation 'no_such_op'"]),
    "unknown parameter": (["run", *REPRICE, "--param", "zzz=1"], ["--param zzz", "has no parameter"]),
    "text for an integer": (["run", "reprice_category", "--param", "category_id=abc", "--param", "new_price=1"],
                            ["--param category_id", "integer"]),
    "an integer too big": (["run", "reprice_category", "--param", "category_id=" + "9" * 40,
                            "--param", "new_price=1"], ["--param category_id", "out of range"]),
    "a numeric too big": (["run", "reprice_category", "--param", "category_id=1", "--param", "new_price=1e999999"],
                          ["--param new_price", "overflow"]),
    "a missing parameter": (["run", "reprice_category", "--param", "category_id=1"], ["missing --param new_price"]),
    "a malformed array": (["run", *USERS, "--param", "user_ids=[1,"], ["--param user_ids", "not a JSON array"]),
    "a bad uuid in an array": (["run", *USERS, "--param", "user_ids=abc,def"], ["--param user_ids", "uuid"]),
    "NUL in a text value": (["run", *USERS[:1], "--param", "user_ids=[]", "--param", "new_status=@{tmp}/nul.txt"],
                            ["--param new_status", "NUL"]),
    "invalid UTF-8 in a value": (["run", *USERS, "--param", os.fsdecode(b"user_ids=\xff\xfe")],
                                 ["--param user_ids", "not valid UTF-8", "0xff"]),
    "invalid UTF-8 in a name": (["run", *USERS, "--param", os.fsdecode(b"\xff=1")], ["--param \\xff", "UTF-8"]),
    "a binary @FILE": (["run", *USERS, "--param", "user_ids=@{tmp}/binary.txt"],
                       ["--param user_ids", "binary.txt is not UTF-8 text"]),
    "a missing @FILE": (["run", *USERS, "--param", "user_ids=@{tmp}/missing"], ["--param user_ids", "cannot read"]),
    "jsonb nested too deeply": (["run", "create_members", "--param", "members=@{tmp}/deep.json"],
                                ["--param members", "nested too deeply"]),
    "a malformed --resume": (["run", *REPRICE, "--resume", "not-a-uuid"], ["--resume 'not-a-uuid'", "not a run id"]),
    "a malformed --resume of a parallel op": (["run", "import_products", "--param", "products_array=[]",
                                               "--resume", "xyz"], ["--resume 'xyz'", "not a run id"]),
    "--resume of no run, parallel op": (["run", "import_products", "--param", "products_array=[]",
                                         "--resume", str(uuid.UUID(int=1))], ["no run of import_products"]),
    "--resume of no run, CSV op": (["run", "import_products_csv", "--resume", str(uuid.UUID(int=1))],
                                   ["no run of import_products_csv"]),
    "--resume of no run, procedure": (["run", *REPRICE, "--resume", str(uuid.UUID(int=1))],
                                      ["cannot resume run", "it is unknown"]),
    "--workers 0": (["run", *REPRICE, "--workers", "0"], ["--workers", "range"]),
    "--workers -1": (["run", *REPRICE, "--workers", "-1"], ["--workers", "range"]),
    "--workers huge": (["run", *REPRICE, "--workers", str(2 ** 70)], ["--workers", "range"]),
    "--workers on a non-parallel op": (["run", *REPRICE, "--workers", "4"], ["--workers 4", "is not parallel"]),
    "--batch-size 0": (["run", *REPRICE, "--batch-size", "0"], ["--batch-size", "range"]),
    "--batch-size -5": (["run", *REPRICE, "--batch-size", "-5"], ["--batch-size", "range"]),
    "--batch-size 2^40": (["run", *REPRICE, "--batch-size", str(2 ** 40)], ["--batch-size", "range"]),
    "--csv missing": (["run", "import_products_csv", "--csv", "{tmp}/missing.csv"], ["--csv", "cannot read"]),
    "--csv a directory": (["run", "import_products_csv", "--csv", "{tmp}/adir"], ["--csv", "is a directory"]),
    "--csv /dev/null": (["run", "import_products_csv", "--csv", "/dev/null"], ["/dev/null", "empty"]),
    "--csv on a non-CSV op": (["run", *REPRICE, "--csv", "{tmp}/ok.csv"], ["--csv", "does not import CSV"]),
    "--json missing": (["run", "create_members", "--json", "{tmp}/missing.json"], ["--json", "cannot read"]),
    "--json a directory": (["run", "create_members", "--json", "{tmp}/adir"], ["--json", "is a directory"]),
    "--json on a non-JSON op": (["run", *REPRICE, "--json", "{tmp}/ok.json"], ["--json", "no jsonb data_source"]),
    "--rejects in a missing directory (CSV)": (
        ["run", "import_products_csv", "--csv", "{tmp}/ok.csv", "--rejects", "{tmp}/no/dir/r.csv"],
        ["--rejects", "no directory"]),
    "--rejects in a missing directory (JSON)": (
        ["run", "create_members", "--json", "{tmp}/ok.json", "--rejects", "{tmp}/no/dir/r.jsonl"],
        ["--rejects", "no directory"]),
    "--rejects a directory": (["run", "import_products_csv", "--csv", "{tmp}/ok.csv", "--rejects", "{tmp}/adir"],
                              ["--rejects", "is a directory"]),
    "--rejects without an import": (["run", *REPRICE, "--rejects", "{tmp}/r.csv"],
                                    ["--rejects", "only an import of --csv FILE or --json FILE"]),
    "--rejects of a CSV read from a pipe": (
        ["run", "import_products_csv", "--csv", "{tmp}/fifo", "--rejects", "{tmp}/r.csv"],
        ["--rejects", "not a regular file"]),
    "--rejects over the CSV itself": (
        ["run", "import_products_csv", "--csv", "{tmp}/ok.csv", "--rejects", "{tmp}/ok.csv"],
        ["--rejects", "is the --csv file itself"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_run_refuses_bad_input_in_one_line_and_runs_nothing(db, tmp_path, case):
    (tmp_path / "nul.txt").write_bytes(b"ab\x00cd")
    files = _files(tmp_path)
    argv, needles = REFUSED[case]
    before = runs(db)
    result = specql(*[a.replace("{tmp}", files["tmp"]) for a in argv], url=db)
    assert_refused(result, *needles)
    assert runs(db) == before  # nothing started
    assert staged(db) == 0
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "no").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes files without permission")
def test_files_without_permission_are_refused_before_the_run(db, tmp_path):
    _files(tmp_path)
    locked = tmp_path / "locked.csv"
    locked.write_text("name,price,category_id\nx,1,1\n")
    locked.chmod(0)
    before = runs(db)
    assert_refused(specql("run", "import_products_csv", "--csv", str(locked), url=db), "--csv", "cannot read")
    assert_refused(specql("run", "import_products_csv", "--csv", str(tmp_path / "ok.csv"), "--rejects", str(locked),
                          url=db), "--rejects", "not writable")
    assert runs(db) == before


def test_a_jsonb_number_of_5000_digits_goes_to_postgresql(db):
    """Python's int() refuses more than 4300 digits (an internal error before): the value is
    PostgreSQL's to judge (jsonb keeps any numeric)."""
    with connect(db) as conn:
        n = conn.execute("SELECT count(*) FROM public.member").fetchone()[0]
    big = "9" * 5000
    result = specql("run", "create_members", "--param", f'members=[{{"id": 9000001, "email": "big@x.org", '
                    f'"name": "{big}"}}, {{"id": 9000002, "email": "n@x.org", "name": "n", "extra": {big}}}]',
                    "--format", "json", url=db)
    err = result.stderr.decode()
    assert "Traceback" not in err and "internal error" not in err, err
    assert result.returncode == 0, err
    assert json.loads(result.stdout)["processed_records"] == 2
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM public.member").fetchone()[0] == n + 2


@pytest.mark.parametrize("command", [["run", *REPRICE], ["plan", *REPRICE], ["status"], ["migrate", "generated"]])
def test_a_database_url_libpq_cannot_parse_names_the_option(command):
    result = specql(*command, url="notaurl://x")
    assert_refused(result, "--database-url", 'missing "="')
    result = specql(*command, url=os.fsdecode(b"postgresql://\xff@/x"))
    assert_refused(result, "--database-url", "not valid UTF-8")


def test_an_unreachable_server_is_named_with_its_cause(db):
    line = assert_refused(specql("run", *REPRICE, url=UNREACHABLE), "cannot connect")
    assert "127.0.0.1" in line and "Connection refused" in line
    assert_refused(specql("status", url=UNREACHABLE), "cannot connect", "Connection refused")
    wrong_db = make_conninfo(db, dbname="h_cli_no_such_db")
    assert_refused(specql("run", *REPRICE, url=wrong_db), "cannot connect", 'database "h_cli_no_such_db"')


def test_a_database_without_the_runtime_is_told_to_migrate(pg_server_url):
    with database.throwaway_database(pg_server_url) as url:
        for command in (["run", *REPRICE], ["plan", *REPRICE]):
            assert_refused(specql(*command, url=url), "public.reprice_category is not in the database",
                           "specql migrate")
        assert_refused(specql("status", url=url), "no specql runtime")


def test_status_refuses_an_operation_name_that_is_not_utf8(db):
    assert_refused(specql("status", "--operation", os.fsdecode(b"\xff"), url=db), "--operation", "UTF-8")


# --------------------------------------------------------------------------- Ctrl-C


class Proc:
    """`specql run` with SIGINT at its default in the child (see test_csv_interrupt.Run)."""

    def __init__(self, url: str, *args: str):
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = subprocess.Popen([str(SPECQL), "run", *args, "--database-url", url, "--format", "json"],
                                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, previous)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        assert "Traceback" not in err and "internal error" not in err and "Exception" not in err, err
        return self.proc.returncode, out, err


def _wait_for(url: str, query: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with connect(url) as conn:
        while not conn.execute(query).fetchone()[0]:
            assert proc.proc.poll() is None, proc.proc.communicate()
            assert time.monotonic() < deadline, f"never: {query}"
            time.sleep(0.02)


def _blocked_on_a_lock(url: str, proc: Proc) -> None:
    _wait_for(url, "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND application_name LIKE 'specql run%'", proc)


def test_ctrl_c_in_the_first_batch_of_a_procedure_cancels_its_run(db):
    """Its run row is committed before the first batch, before any progress notice gives the id:
    the Ctrl-C finds the run by its backend and asks it to stop after that batch. (Before: a
    query cancel killed the call, the row was left `running`, and the message spoke of a
    per_batch function's rollback.)"""
    before = {r[0] for r in runs(db)}
    locker = psycopg.connect(db)
    locker.execute("SELECT * FROM public.product WHERE category_id = 7 FOR UPDATE")
    proc = Proc(db, *REPRICE, "--batch-size", "50")
    try:
        _blocked_on_a_lock(db, proc)
        with connect(db) as conn:
            [(run_id, status)] = conn.execute(
                "SELECT operation_id::text, status FROM specql.batch_operation_runs "
                "WHERE operation = 'reprice_category' AND NOT (operation_id::text = ANY(%s))", (list(before),)).fetchall()
        assert status == "running"
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the cancel request is recorded while the batch still waits
    finally:
        locker.rollback()
        locker.close()
    code, out, err = proc.finish()
    assert code == 1, err
    result = json.loads(out)
    assert (result["operation_id"], result["status"], result["batch_count"], result["processed_records"]) == \
        (run_id, "cancelled", 1, 50)
    assert f"--resume {run_id}" in err
    with connect(db) as conn:
        assert conn.execute("SELECT status, processed_records FROM specql.batch_operation_runs "
                            "WHERE operation_id = %s", (run_id,)).fetchone() == ("cancelled", 50)


def test_ctrl_c_in_the_first_batch_of_a_function_rolls_it_back(db):
    before = runs(db)
    with connect(db) as conn:
        conn.execute("INSERT INTO public.\"user\" (email, status, is_admin, last_login_at) "
                     "SELECT 'old' || g || '@x.org', 'active', false, now() - interval '2 years' FROM generate_series(1, 5) g")
    locker = psycopg.connect(db)
    locker.execute('LOCK TABLE public."user" IN ACCESS EXCLUSIVE MODE')
    proc = Proc(db, "deactivate_inactive_users", "--confirm")
    try:
        _blocked_on_a_lock(db, proc)
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    finally:
        locker.rollback()
        locker.close()
    code, out, err = proc.finish()
    assert code == 1 and "cancelled before the routine reported its first batch" in err, err
    assert runs(db) == before


def _products_file(folder: Path) -> Path:
    path = folder / "products.json"
    path.write_text(json.dumps([{"name": f"q{i}", "price": 1, "category_id": 4} for i in range(6000)]))
    return path


@pytest.mark.parametrize("kind, spacing", [("procedure", 0.004), ("procedure", 0.05), ("parallel", 0.004)])
def test_ctrl_c_at_any_moment_leaves_no_run_running_and_the_exit_code_says_its_end(db, tmp_path, kind, spacing):
    """SIGINT sent again and again from a chosen moment, across the command's whole life: while
    Python starts, before the call, in the first batch, in the last, as the routine returns,
    while the result prints, at the exit. Whatever the moment: no traceback, no run left
    `running`, exit 0 exactly when the run completed, 1 when it was cancelled, 130 (or killed by
    the signal while Python itself starts) when no run began. (Before: a Ctrl-C after the
    routine returned killed the process by the signal or printed `interrupted`, exit 130, for a
    run that had completed or been cancelled.)"""
    args = [*REPRICE, "--batch-size", "5"] if kind == "procedure" else \
        ["import_products", "--param", f"products_array=@{_products_file(tmp_path)}", "--workers", "2",
         "--batch-size", "50"]
    seen = set()
    for delay in (0.0, 0.15, 0.4, 0.7, 0.85, 0.95, 1.05, 1.15, 1.3, 1.5):
        known = {r[0] for r in runs(db)}
        proc = Proc(db, *args)
        time.sleep(delay)
        while proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGINT)
            time.sleep(spacing)
        code, out, err = proc.finish()
        mine = [r for r in runs(db) if r[0] not in known]
        assert all(status != "running" for _, _, status in mine), (delay, mine, err)
        if not mine:
            assert code in (130, -signal.SIGINT), (delay, code, err)
            seen.add("before")
            continue
        [(run_id, _, status)] = mine
        assert code == (0 if status == "completed" else 1), (delay, code, status, err)
        assert status in ("completed", "cancelled"), (delay, status, err)
        assert json.loads(out)["operation_id"] == run_id
        seen.add(status)
    assert "before" in seen and len(seen) >= 2, seen


def test_ctrl_c_after_an_import_ended_says_what_became_of_the_run(db, tmp_path):
    """The steps after the routine returned (summary, --rejects, removing the load) can be
    interrupted: exit 130 with a line naming the run and how it ended. The moment is held:
    --rejects is a FIFO nobody reads, so writing it waits. (Before: only `interrupted`.)"""
    source = tmp_path / "in.csv"
    source.write_text("name,price,category_id\n" + "".join(f"c{i},{i % 7 + 1},5\n" for i in range(300))
                      + "bad,notanumber,5\n")
    fifo = tmp_path / "rejects.csv"
    os.mkfifo(fifo)
    known = {r[0] for r in runs(db)}
    err_file = tmp_path / "stderr"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(err_file, "w") as err_out:
            proc = subprocess.Popen([str(SPECQL), "run", "import_products_csv", "--csv", str(source), "--rejects",
                                     str(fifo), "--database-url", db], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=err_out, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 30
    while "imported 300 record(s), rejected 1" not in err_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()
        time.sleep(0.05)
    time.sleep(0.2)  # in open() of the FIFO
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    err = err_file.read_text()
    assert "Traceback" not in err and "internal error" not in err, err
    assert proc.returncode == 130, err
    [(run_id, _, status)] = [r for r in runs(db) if r[0] not in known]
    assert status == "completed_with_errors"
    assert f"interrupted after the run {run_id} ended completed_with_errors" in err
