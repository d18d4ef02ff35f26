"""`specql run` (SPEC §7): parameters bound by their declared types, the routine called, the
result printed; every misuse one line and exit 1, nothing run."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import connect, generate_and_apply
from specql.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path, database_url, monkeypatch):
    monkeypatch.chdir(ROOT)
    generate_and_apply(database_url, ROOT / "entities", tmp_path / "out")
    return database_url


def run(*args: str):
    return CliRunner().invoke(main, ["run", *args])


def users(url: str, n: int, status: str = "inactive") -> list[str]:
    with connect(url) as conn:
        rows = conn.execute("INSERT INTO public.\"user\" (email, status) SELECT 'u' || g || '@x.org', %s "
                            "FROM generate_series(1, %s) g RETURNING id::text", (status, n)).fetchall()
    return [r[0] for r in rows]


def test_a_function_runs_with_an_array_from_a_file_and_prints_one_json_object(db, tmp_path):
    ids = users(db, 250)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    result = run("bulk_update_user_status", "--database-url", db, "--param", f"user_ids=@{tmp_path / 'ids.txt'}",
                 "--param", "new_status=active", "--format", "json")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.strip()]
    out = json.loads(line)
    assert (out["status"], out["total_records"], out["processed_records"], out["batch_count"]) == \
        ("completed", 250, 250, 3)
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM public.\"user\" WHERE status = 'active'").fetchone()[0] == 250


def test_an_array_as_json_and_a_procedure(db):
    ids = users(db, 3)
    result = run("bulk_update_user_status", "--database-url", db, "--param", f"user_ids={json.dumps(ids)}",
                 "--param", "new_status=gone", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["processed_records"] == 3
    with connect(db) as conn:
        conn.execute("INSERT INTO public.product (name, price, category_id) SELECT 'p' || g, 1, 7 "
                     "FROM generate_series(1, 30) g")
    result = run("reprice_category", "--database-url", db, "--param", "category_id=7", "--param", "new_price=2.5",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["processed_records"] == 30


def test_a_status_other_than_completed_exits_1(db):
    users(db, 2)
    result = run("deactivate_inactive_users", "--database-url", db, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "awaiting_confirmation"


@pytest.mark.parametrize("args, message", [
    (["bulk_update_user_stats"], "unknown operation 'bulk_update_user_stats' (did you mean 'bulk_update_user_status'?)"),
    (["bulk_update_user_status", "--param", "new_status=a"], "missing --param user_ids=... (uuid[])"),
    (["bulk_update_user_status", "--param", "user_id={}", "--param", "new_status=a"],
     "--param user_id: bulk_update_user_status has no parameter 'user_id' (did you mean 'user_ids'?)"),
    (["bulk_update_user_status", "--param", "user_ids=1,2", "--param", "new_status=a"],
     '--param user_ids: invalid input syntax for type uuid: "1" (expected uuid[])'),
    (["bulk_update_user_status", "--param", "user_ids", "--param", "new_status=a"],
     "--param 'user_ids': write NAME=VALUE or NAME=@FILE"),
    (["bulk_update_user_status", "--param", "user_ids=@/nonexistent/ids.txt", "--param", "new_status=a"],
     "--param user_ids: cannot read /nonexistent/ids.txt: No such file or directory"),
    (["bulk_update_user_status", "--resume", str(uuid.uuid4()), "--param", "user_ids={}", "--param", "new_status=a"],
     "--resume: bulk_update_user_status is not resumable (only transaction: commit_per_batch runs are)"),
])
def test_every_misuse_is_one_line_and_exit_1(db, args, message):
    result = run(*args, "--database-url", db)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"specql run: {message}"]
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM specql.batch_operation_runs").fetchone()[0] == 0


def test_an_unreachable_server_is_one_line(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = run("bulk_update_user_status", "--database-url", "postgresql://nobody@127.0.0.1:9/none",
                 "--param", "user_ids={}", "--param", "new_status=a")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("specql run: cannot connect: ")


def test_progress_reaches_the_caller_batch_by_batch_while_the_routine_works(db):
    from specql.generate import load_project
    from specql.run import bind_params, execute, find_operation

    ids = users(db, 450)
    op = find_operation(load_project(["entities/"]), "bulk_update_user_status")
    seen = []
    result = execute(db, op, bind_params(op, [f"user_ids={json.dumps(ids)}", "new_status=active"]),
                     on_progress=lambda p: seen.append((p.processed, p.batches)))
    assert result["status"] == "completed"
    assert seen == [(100, 1), (200, 2), (300, 3), (400, 4), (450, 5)]


def test_batch_size_option_and_ctrl_c_cancels_a_procedure_which_then_resumes(db, tmp_path):
    """A real `specql run` process: SIGINT while a batch is held stops the run after that batch
    (status cancelled, exit 1, how to resume printed); `--resume` then finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with connect(db) as conn:
        conn.execute("INSERT INTO public.product (name, price, category_id) SELECT 'p' || g, 1, 9 "
                     "FROM generate_series(1, 1000) g")
        conn.execute("""
            CREATE TABLE public.hold (batch integer);
            INSERT INTO public.hold VALUES (2);
            CREATE FUNCTION public.hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                WHILE EXISTS (SELECT 1 FROM public.hold WHERE batch = NEW.batch_number) LOOP
                    PERFORM pg_sleep(0.05);
                END LOOP;
                RETURN NEW;
            END $$;
            CREATE TRIGGER hold_batch BEFORE INSERT ON specql.batch_operation_logs
                FOR EACH ROW EXECUTE FUNCTION public.hold_batch();
        """)
    cmd = [sys.executable, "-m", "specql.cli", "run", "reprice_category", "--database-url", db,
           "--param", "category_id=9", "--param", "new_price=3", "--batch-size", "100", "--format", "json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    with connect(db) as conn:
        while not conn.execute("SELECT true FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                               "AND application_name LIKE 'specql run%'").fetchone():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        conn.execute("DELETE FROM public.hold")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    result = json.loads(out)
    assert (result["status"], result["processed_records"], result["batch_count"]) == ("cancelled", 200, 2)
    assert f"specql run reprice_category --resume {result['operation_id']}" in err
    resumed = run("reprice_category", "--database-url", db, "--param", "category_id=9", "--param", "new_price=3",
                  "--resume", result["operation_id"], "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    done = json.loads(resumed.stdout)
    assert (done["status"], done["processed_records"], done["operation_id"]) == \
        ("completed", 1000, result["operation_id"])
    with connect(db) as conn:
        sizes = conn.execute("SELECT batch_number, batch_size, records_processed FROM specql.batch_operation_logs "
                             "WHERE operation_id = %s ORDER BY batch_number", (result["operation_id"],)).fetchall()
    # --batch-size 100 for the first run; the resume, given none, takes the file's 500
    assert sizes == [(1, 100, 100), (2, 100, 100), (3, 500, 500), (4, 500, 300)]
