"""Ctrl-C during `specql run OP --csv FILE` (issue 12): the first one cancels the routine after
its batch, and the rest of the file goes on being staged so the run can be resumed on the whole
load; specql says so at once (and how far the staging got). A second Ctrl-C abandons the load:
the staging stops at once (its connection closed), the load can no longer be resumed (its
staging session ended before the last row: templates/sql/csv/streamed.sql.j2), so its staged
rows are removed; specql says so and exits 1, as for any cancelled run.

Real processes and signals: `specql run` in a subprocess, SIGINT sent to it. The test holds the
two sessions still where it needs them with real locks: the routine's first INSERT waits on a
SHARE lock of the target table, and the staging's second chunk on an advisory lock (a trigger on
the staging table takes it at one record), so the Ctrl-Cs land while the routine runs and while
the rest of the file is staged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

import specql.csvimport as csvimport
from helpers import generate_and_apply, write_entities
from specql.csvimport import run_csv
from specql.generate import load_project
from specql.run import bind_params, execute, find_operation
from test_csv_streamed import ITEMS, write_items

SPECQL = Path(sys.executable).parent / "specql"
RECORDS = 100_000  # ~2.4 MB: a first chunk of 1 MB (~44,000 records), then the rest
HELD_AT = 80_000  # a record of the second chunk: its COPY waits on the advisory lock there
LOCK_KEY = 4242
OP = "import_items_resumable"


class Run:
    """`specql run` in a subprocess started with SIGINT at its default (as at a terminal; see
    tests/test_migrate_locks.py's start_migrate), its stderr collected line by line."""

    def __init__(self, url: str, ents: Path, *args: str, op: str = OP):
        env = {k: v for k, v in os.environ.items() if k != "PGAPPNAME"}
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = subprocess.Popen([str(SPECQL), "run", op, str(ents), "--database-url", url, *args],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_for_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.lines) if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None or self.reader.is_alive(), f"ended without {text!r}: {self.lines}"
            assert time.monotonic() < deadline, f"no {text!r} on stderr: {self.lines}"
            time.sleep(0.05)

    def finish(self, timeout: float) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def query(url: str, text: str, *args):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(text, args or None).fetchall()


def wait_until(check, what: str, run: Run, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert run.proc.poll() is None, f"specql run ended before {what}: {run.lines}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}: {run.lines}"
        time.sleep(0.05)
    return value


def waiting(url: str, application: str, event: str) -> bool:
    return bool(query(url, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                           "AND wait_event_type = 'Lock' AND wait_event = %s", application, event))


def held_load(url: str, tmp_path: Path, op: str) -> tuple[Path, Path, psycopg.Connection]:
    """ITEMS applied, a file of RECORDS records, and the staging of `op` held at record HELD_AT
    until the returned session lets go of its advisory lock: (entities, file, that session)."""
    ents = write_entities(tmp_path / "e", item=ITEMS)
    generate_and_apply(url, ents, tmp_path / "gen")
    path = tmp_path / "items.csv"
    write_items(path, RECORDS)
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE FUNCTION st.hold_staging() RETURNS trigger LANGUAGE plpgsql AS "
                      f"$$BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NEW; END$$")
        setup.execute(f"CREATE TRIGGER hold_staging BEFORE INSERT ON st.{op}_staging FOR EACH ROW "
                      f"WHEN (NEW._record = {HELD_AT}) EXECUTE FUNCTION st.hold_staging()")
    staging_lock = psycopg.connect(url, autocommit=True)
    staging_lock.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    return ents, path, staging_lock


@pytest.fixture
def cancelled_while_staging(database_url_any, tmp_path):
    """A `specql run --csv` whose routine was cancelled by a Ctrl-C after a few batches of 100
    records, the rest of the file still being staged (held at record HELD_AT); yields (url,
    entities, run, operation_id, records the run imported, the advisory lock's session)."""
    url = database_url_any
    ents, path, staging_lock = held_load(url, tmp_path, OP)
    target_lock = psycopg.connect(url)
    run = Run(url, ents, "--csv", str(path), "--batch-size", "100")
    try:
        # Two batches done (specql run knows the run's id from their progress notices), then
        # the next one waits; the first chunk's other ~300 batches are still to do.
        wait_until(lambda: query(url, "SELECT 1 FROM specql.batch_operation_runs WHERE processed_records >= 200"),
                   "the routine did two batches", run)
        target_lock.execute("LOCK TABLE st.item IN SHARE MODE")
        wait_until(lambda: waiting(url, f"specql run {OP}", "relation"), "the routine waits on st.item", run)
        wait_until(lambda: waiting(url, f"specql run {OP} (staging)", "advisory"),
                   f"the staging waits at record {HELD_AT}", run)
        run.proc.send_signal(signal.SIGINT)
        wait_until(lambda: query(url, "SELECT 1 FROM specql.batch_operation_cancellations"),
                   "the cancel is asked", run)
        target_lock.commit()  # the routine ends its batch, then stops (cancelled)
        line = run.wait_for_line("staging the rest of")
        operation_id = str(query(url, "SELECT operation_id FROM specql.batch_operation_runs")[0][0])
        assert f"the run {operation_id} ended cancelled" in line, line
        assert f"`specql run {OP} --resume {operation_id}`" in line, line
        assert "Ctrl-C again to abandon the load" in line, line
        assert run.proc.poll() is None  # waiting for the rest of the file
        (status, done), = query(url, "SELECT status, processed_records FROM specql.batch_operation_runs")
        assert status == "cancelled" and 200 <= done < HELD_AT and done % 100 == 0, (status, done)
        assert query(url, "SELECT count(*), count(DISTINCT id) FROM st.item") == [(done, done)]
        yield url, ents, run, operation_id, done, staging_lock
    finally:
        run.kill()
        target_lock.close()
        staging_lock.close()


def test_first_ctrl_c_stages_the_rest_and_the_run_resumes(cancelled_while_staging):
    url, ents, run, operation_id, done, staging_lock = cancelled_while_staging
    staging_lock.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))  # the staging goes on to the end
    code, err = run.finish(120)
    assert code == 1, err
    assert f"cancelled: resume with `specql run {OP} --resume {operation_id}`" in err, err
    assert "abandoned the load" not in err, err
    # The stopped run's total_records: the rows staged when it stopped (the first chunk), fewer
    # than the load has now.
    (status, processed, seen), = query(url, "SELECT status, processed_records, total_records "
                                            "FROM specql.batch_operation_runs")
    assert (status, processed) == ("cancelled", done) and done <= seen < HELD_AT, (status, processed, seen)
    # the whole load staged, its marker gone: the resume imports the rest, every record once
    assert query(url, "SELECT count(*), count(*) FILTER (WHERE _record = 0), max(_record) "
                      "FROM st.import_items_resumable_staging") == [(RECORDS, 0, RECORDS)]
    resumed = subprocess.run([str(SPECQL), "run", OP, str(ents), "--database-url", url, "--resume", operation_id],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert query(url, "SELECT count(*), count(DISTINCT id), sum(n) FROM st.item") == [
        (RECORDS, RECORDS, sum(range(1, RECORDS + 1)) - 51)]
    assert query(url, "SELECT count(*) FROM st.import_items_resumable_staging") == [(0,)]
    # the resumed run counts the whole load, not the rows staged when it stopped
    assert query(url, "SELECT status, total_records, processed_records, failed_records "
                      "FROM specql.batch_operation_runs") == [("completed", RECORDS, RECORDS, 0)]


def test_second_ctrl_c_abandons_the_load(cancelled_while_staging):
    url, ents, run, operation_id, done, staging_lock = cancelled_while_staging
    staged = query(url, "SELECT count(*) FROM st.import_items_resumable_staging WHERE _record > 0")[0][0]
    assert 0 < staged < HELD_AT  # the first chunk only; the second waits at record HELD_AT
    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code, err = run.finish(60)  # the staging waits on a lock: it is stopped, not waited for
    took = time.monotonic() - started
    print(f"abandoned in {took:.2f} s")
    assert code == 1, err
    assert took < 15, (took, err)
    assert f"abandoned the load after {staged:,} staged record(s) and removed them; the run {operation_id} " \
           f"cannot be resumed" in err, err
    assert "resume with" not in err, err
    deadline = time.monotonic() + 10  # a closed session's backend ends soon after
    while query(url, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'specql run%'"):
        assert time.monotonic() < deadline, "a specql run backend stays"
        time.sleep(0.05)
    # the run as the routine left it; the load is gone, marker and all
    assert query(url, "SELECT status, processed_records FROM specql.batch_operation_runs") == [("cancelled", done)]
    assert query(url, "SELECT count(*) FROM st.import_items_resumable_staging") == [(0,)]
    assert query(url, "SELECT count(*), count(DISTINCT id) FROM st.item") == [(done, done)]
    resumed = subprocess.run([str(SPECQL), "run", OP, str(ents), "--database-url", url, "--resume", operation_id],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1
    # the rows the run counted when it stopped (the load still being staged), none left
    counted = query(url, "SELECT total_records FROM specql.batch_operation_runs")[0][0]
    assert f"cannot resume run {operation_id} of {OP}: it counted {counted} staged rows, 0 are left" \
        in resumed.stderr, resumed.stderr
    assert query(url, "SELECT count(*) FROM st.item") == [(done,)]


def test_a_run_that_cannot_be_resumed_does_not_wait_for_the_staging(database_url_any, tmp_path):
    """A function (not commit_per_batch) cannot be resumed: a Ctrl-C during its first batch
    (before specql run knows its id, so the statement is cancelled) abandons the load at once,
    its staging held on the server or not, and removes what was staged."""
    url = database_url_any
    ents, path, staging_lock = held_load(url, tmp_path, "import_items")
    target_lock = psycopg.connect(url)
    target_lock.execute("LOCK TABLE st.item IN SHARE MODE")
    run = Run(url, ents, "--csv", str(path), "--batch-size", "100", op="import_items")
    try:
        wait_until(lambda: waiting(url, "specql run import_items", "relation"), "the routine waits on st.item", run)
        wait_until(lambda: waiting(url, "specql run import_items (staging)", "advisory"),
                   f"the staging waits at record {HELD_AT}", run)
        staged = query(url, "SELECT count(*) FROM st.import_items_staging WHERE _record > 0")[0][0]
        assert 0 < staged < HELD_AT
        started = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        code, err = run.finish(60)
        took = time.monotonic() - started
        print(f"abandoned in {took:.2f} s")
        assert code == 1, err
        assert took < 15, (took, err)
        assert f"abandoned the load after {staged:,} staged record(s) and removed them" in err, err
        assert "cancelled before the routine reported its first batch" in err, err
        assert "staging the rest" not in err, err
        assert query(url, "SELECT count(*) FROM st.import_items_staging") == [(0,)]
        target_lock.commit()
        assert query(url, "SELECT count(*) FROM st.item") == [(0,)]
    finally:
        run.kill()
        target_lock.close()
        staging_lock.close()


def test_the_wait_for_the_rest_of_the_load_reports_progress(database_url, tmp_path, monkeypatch):
    """run_csv (in a thread: no signal handling) after the routine was cancelled from another
    session: a line now and then with the records staged so far (committed ones) and how much
    of the file was read, until the staging ends; the run is then cancelled, its load whole."""
    monkeypatch.setattr(csvimport, "STAGING_PROGRESS_EVERY", 0.2)
    url = database_url
    ents, path, staging_lock = held_load(url, tmp_path, OP)
    op = find_operation(load_project([str(ents)]), OP)
    lines: list[str] = []
    results: list[dict] = []
    runner = threading.Thread(target=lambda: results.append(run_csv(
        url, op, str(path), [], confirm=False, batch_size=100, resume=None, rejects=None, execute=execute,
        bind_params=bind_params, echo=lines.append)))
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while not query(url, "SELECT 1 FROM specql.batch_operation_runs WHERE processed_records >= 200"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (operation_id,), = query(url, "SELECT operation_id FROM specql.batch_operation_runs")
        query(url, "SELECT specql.cancel_operation(%s)", operation_id)
        while sum("staged " in line and " record(s) of " in line for line in lines) < 3:
            assert time.monotonic() < deadline and runner.is_alive(), lines
            time.sleep(0.05)
        staged = query(url, f"SELECT count(*) FROM st.{OP}_staging WHERE _record > 0")[0][0]
        progress = [line for line in lines if line.startswith("staged ")]
        assert progress[-1].startswith(f"staged {staged:,} record(s) of {path} ("), progress
        assert progress[-1].endswith("% of the file read)"), progress
        assert lines[0].startswith(f"the run {operation_id} ended cancelled; staging the rest of {path}"), lines
        staging_lock.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        runner.join(120)
    finally:
        staging_lock.close()
        runner.join(120)
    r = results[0]
    assert r["status"] == "cancelled"
    assert query(url, f"SELECT count(*), count(*) FILTER (WHERE _record = 0) FROM st.{OP}_staging") == [(RECORDS, 0)]
