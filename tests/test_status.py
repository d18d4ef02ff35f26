"""`specql status` (issue 10): recent runs read from `specql.batch_operation_status`, a table or
JSON, abandoned runs shown as such; a missing server or runtime is one line and exit 1.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from specql import contract
from specql.cli import main
from specql.database import connect
from test_run_liveness import install_runtime, insert_run, worker_backend


# ---------------------------------------------------------------------- specql status


def status(*args: str):
    return CliRunner().invoke(main, ["status", *args])


def test_status_lists_recent_runs_with_abandoned_ones(database_url):
    url = database_url
    install_runtime(url)
    with connect(url, autocommit=True) as admin:
        with connect(url, autocommit=True) as gone:
            pid, started = worker_backend(admin, gone)
        crashed = insert_run(admin, pid, started, operation="bulk_update_user_status", total=1000, processed=400,
                             started_at="now() - interval '2 minutes'")
        finished = insert_run(admin, None, None, status="completed", operation="reprice_category", total=5,
                              processed=5)
    result = status("--database-url", url, "--format", "json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [(r["operation_id"], r["state"]) for r in runs] == [(str(finished), "completed"),
                                                              (str(crashed), "abandoned")]
    assert runs[1]["processed_records"] == 400 and runs[1]["percent_done"] == 40.0
    assert runs[1]["eta_seconds"] is None
    assert set(runs[0]) == set(contract.STATUS_COLUMNS)

    text = status("--database-url", url)
    assert text.exit_code == 0, text.output
    line = next(line for line in text.stdout.splitlines() if str(crashed) in line)
    assert "bulk_update_user_status" in line and "abandoned" in line and "400/1,000 (40.0%)" in line
    assert "--resume" in text.stdout  # what to do about it

    only = json.loads(status("--database-url", url, "--format", "json", "--operation", "reprice_category").stdout)
    assert [r["operation_id"] for r in only] == [str(finished)]
    assert len(json.loads(status("--database-url", url, "--format", "json", "--limit", "1").stdout)) == 1


def test_status_of_an_empty_runtime_says_so(database_url):
    install_runtime(database_url)
    result = status("--database-url", database_url)
    assert result.exit_code == 0 and "no runs recorded" in result.stdout
    assert json.loads(status("--database-url", database_url, "--format", "json").stdout) == []


def test_status_without_a_runtime_or_a_server_is_one_line_and_exit_1(database_url):
    no_runtime = status("--database-url", database_url)
    unreachable = status("--database-url", "postgresql://127.0.0.1:1/nothing?connect_timeout=2")
    for result in (no_runtime, unreachable):
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("specql status: ")
        assert "Traceback" not in result.output
    assert "specql migrate" in no_runtime.stderr
    assert "cannot connect" in unreachable.stderr
