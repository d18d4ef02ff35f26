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
