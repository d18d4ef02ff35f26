"""``specql migrate`` waiting on locks and receiving signals, against real servers.

A migrate waits on two kinds of lock: the advisory lock of other migrate runs, and the
table locks its DDL needs.  Every wait is bounded and names whoever is in the way, DDL
never keeps a table's readers queued for longer than one short lock_timeout, and
SIGTERM (what CI and systemd send) ends a run cleanly: rolled back, disconnected, no
backend left waiting or holding the migrate lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from specql.database import connect
from specql.migrate import ADVISORY_LOCK_KEY, migrate
from test_migrate import exists, ledger, query, run, scalar, write_migrations

SPECQL = Path(sys.executable).parent / "specql"
TABLE_FILES = {
    "0001_table.sql": "CREATE TABLE busy (id int);\n",
    "0002_alter.sql": "CREATE TABLE side (id int);\nALTER TABLE busy ADD COLUMN note text;\n",
}


def applied_busy_table(root: Path, url: str) -> Path:
    """0001 (table busy) applied, 0002 (which alters busy) pending."""
    write_migrations(root, {"0001_table.sql": TABLE_FILES["0001_table.sql"]})
    assert run(root, url)[0] == 0
    return write_migrations(root, {"0002_alter.sql": TABLE_FILES["0002_alter.sql"]})


def start_migrate(root: Path, url: str, *options: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PGAPPNAME", "SPECQL_LOCK_WAIT", "SPECQL_LOCK_TIMEOUT")}
    # The child takes SIGINT as a run started at a terminal does. A shell starts a background
    # job (e.g. a CI script run with `&`) with SIGINT ignored, which every exec'd descendant
    # inherits and Python then keeps; a handler installed here is reset to the default by exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([str(SPECQL), "migrate", str(root), "--database-url", url, *options],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_until(check, what: str, proc: subprocess.Popen | None = None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"migrate ended before {what}: {proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
    return value


def migrate_backends(url: str) -> list[tuple]:
    """Backends of specql migrate (and of its lock watcher) on any database of the server."""
    return query(url, "SELECT pid, state, wait_event_type FROM pg_stat_activity "
                      "WHERE application_name LIKE 'specql migrate%'")


def waiting_migrate(url: str, locktype: str):
    """pid of the specql migrate backend waiting on a lock of *locktype*, or None."""
    rows = query(url, "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                      "WHERE a.application_name = 'specql migrate' AND NOT l.granted AND l.locktype = %s",
                 [locktype])
    return rows[0][0] if rows else None


def assert_gone_cleanly(url: str, proc: subprocess.Popen, code: int) -> str:
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    # The backend ends as the connection closes; give the server a moment to notice.
    wait_until(lambda: not migrate_backends(url), "no specql migrate backend remains")
    assert scalar(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    return out


def test_sigterm_while_waiting_for_the_migrate_lock(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    with connect(database_url_any, autocommit=True, application_name="other deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        holder_pid = holder.info.backend_pid
        proc = start_migrate(root, database_url_any)
        wait_until(lambda: waiting_migrate(database_url_any, "advisory"), "migrate waits on the lock", proc)

        proc.send_signal(signal.SIGTERM)
        # Still holding the lock: the run must not have slipped in before dying.
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 143, out
        wait_until(lambda: not migrate_backends(database_url_any), "no specql migrate backend remains")
        assert [r[0] for r in query(database_url_any, "SELECT pid FROM pg_locks WHERE locktype = 'advisory'")] == [
            holder.info.backend_pid]
    lines = out.strip().splitlines()
    assert f"held by pid {holder_pid} ('other deploy'" in lines[0], out
    assert lines[-1] == "interrupted by SIGTERM: nothing was applied", out
    assert not exists(database_url_any, "public.a")

    assert run(root, database_url_any)[0] == 0  # the next run is not blocked by anything left behind
    assert exists(database_url_any, "public.a")


def test_sigterm_while_a_file_waits_on_a_table_lock(tmp_path, database_url_any):
    root = applied_busy_table(tmp_path, database_url_any)
    with connect(database_url_any) as holder:  # a long transaction that has read the table
        holder.execute("SELECT * FROM busy")
        proc = start_migrate(root, database_url_any, "--lock-timeout", "60")
        wait_until(lambda: waiting_migrate(database_url_any, "relation"), "migrate waits on busy", proc)

        proc.send_signal(signal.SIGTERM)
        out = assert_gone_cleanly(database_url_any, proc, 143)
        holder.rollback()
    assert out.strip().splitlines()[-1] == (
        "interrupted by SIGTERM while applying 0002_alter.sql: rolled back; "
        "0 migration(s) applied before it, 0 not attempted"), out
    assert not exists(database_url_any, "public.side")  # the file's first statement was rolled back
    assert [r[0] for r in ledger(database_url_any)] == ["0001_table.sql"]

    assert run(root, database_url_any)[0] == 0
    assert exists(database_url_any, "public.side")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_while_a_statement_runs(tmp_path, database_url, signum, code):
    root = write_migrations(tmp_path, {
        "0001_slow.sql": "CREATE TABLE early (id int);\nSELECT pg_sleep(60);\n",
        "0002_next.sql": "CREATE TABLE later (id int);\n",
    })
    proc = start_migrate(root, database_url)
    wait_until(lambda: query(database_url, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                           "'specql migrate' AND query LIKE 'SELECT pg_sleep%'"),
               "the slow statement runs", proc)

    proc.send_signal(signum)
    out = assert_gone_cleanly(database_url, proc, code)

    assert out.strip().splitlines()[-1] == (f"interrupted by {signum.name} while applying 0001_slow.sql: rolled back; "
                                            "0 migration(s) applied before it, 1 not attempted"), out
    assert not exists(database_url, "public.early") and not exists(database_url, "public.later")
    assert ledger(database_url) == []


def test_sigkill_leaves_no_backend_waiting(tmp_path, database_url):
    """Even killed outright, the server drops the backend (client_connection_check_interval)."""
    root = applied_busy_table(tmp_path, database_url)
    # Applied first, so the setting must survive the RESET ALL between files.
    write_migrations(root, {"0001b_quick.sql": "CREATE TABLE quick (id int);\n"})
    with connect(database_url) as holder:
        holder.execute("SELECT * FROM busy")  # holder keeps its transaction open
        proc = start_migrate(root, database_url, "--lock-timeout", "60")
        wait_until(lambda: waiting_migrate(database_url, "relation"), "migrate waits on busy", proc)
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(lambda: not migrate_backends(database_url), "the server dropped the backend", timeout=15)
        holder.rollback()


def test_ddl_lock_timeout_retries_until_the_lock_is_free(tmp_path, database_url):
    root = applied_busy_table(tmp_path, database_url)
    lines: list[str] = []
    with connect(database_url, application_name="report job") as holder:
        holder.execute("SELECT * FROM busy")
        holder_pid = holder.info.backend_pid
        # Let go of the table after a few of the migrate's attempts.
        timer = threading.Timer(2.0, holder.rollback)
        timer.start()
        try:
            started = time.monotonic()
            code = migrate(root, database_url, lock_timeout=0.3, lock_wait=30, echo=lines.append)
        finally:
            timer.join()

    assert code == 0, lines
    assert 2.0 < time.monotonic() - started < 15
    retries = [line for line in lines if line.startswith("0002_alter.sql: waiting for a lock held by")]
    assert retries, lines
    assert any(f"pid {holder_pid} ('report job', user " in line and "idle in transaction" in line
               for line in retries), retries
    assert lines[-1] == "1 migration(s) applied"
    assert exists(database_url, "public.side")


def test_ddl_lock_wait_gives_up_naming_the_holder(tmp_path, database_url_any):
    root = applied_busy_table(tmp_path, database_url_any)
    write_migrations(root, {"0003_after.sql": "CREATE TABLE after (id int);\n"})
    lines: list[str] = []
    with connect(database_url_any, application_name="report job") as holder:
        holder.execute("SELECT * FROM busy")
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        code = migrate(root, database_url_any, lock_timeout=0.3, lock_wait=2, echo=lines.append)
        elapsed = time.monotonic() - started
        # Readers were never stuck behind the migrate for longer than one attempt.
        holder.rollback()

    assert code == 1, lines
    assert elapsed < 10, lines
    path = root / "migrations" / "0002_alter.sql"
    failure = [line for line in lines if line.startswith(f"{path}:2: error: gave up after ")]
    assert len(failure) == 1, lines
    assert f"waiting for a lock held by pid {holder_pid} ('report job'" in failure[0]
    assert "(canceling statement due to lock timeout)" in failure[0]
    assert lines[-1] == "rolled back 0002_alter.sql; 0 migration(s) applied before it, 1 not attempted"
    assert not exists(database_url_any, "public.side") and not exists(database_url_any, "public.after")
    assert [r[0] for r in ledger(database_url_any)] == ["0001_table.sql"]


def test_migrate_lock_wait_gives_up_naming_the_holder(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    lines: list[str] = []
    with connect(database_url_any, autocommit=True, application_name="other deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        pid = holder.info.backend_pid
        started = time.monotonic()
        code, lines = run(root, database_url_any, lock_wait=1)
        elapsed = time.monotonic() - started
    assert code == 1, lines
    assert 1 <= elapsed < 6
    assert lines[0].startswith(f"waiting for another specql migrate to finish: the migrate lock is held by "
                               f"pid {pid} ('other deploy', user "), lines
    assert lines[0].endswith("; giving up after 1 s"), lines
    assert lines[-1].startswith(f"error: gave up after 1 s waiting for the migrate lock, held by pid {pid} "), lines
    assert lines[-1].endswith("; nothing was applied")
    assert not exists(database_url_any, "public.a") and not exists(database_url_any, "specql.schema_migrations")


def test_cli_lock_wait_option(tmp_path, database_url):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    with connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        proc = start_migrate(root, database_url, "--lock-wait", "0.5")
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1, out
    assert out.strip().splitlines()[-1].startswith("error: gave up after 0.5 s waiting for the migrate lock"), out

    with connect(database_url, autocommit=True) as holder:  # the same from the environment
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        env = {**os.environ, "SPECQL_LOCK_WAIT": "0.5"}
        result = subprocess.run([str(SPECQL), "migrate", str(root), "--database-url", database_url],
                                capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "giving up after 0.5 s" in result.stdout, result.stdout

    bad = subprocess.run([str(SPECQL), "migrate", str(root), "--database-url", database_url, "--lock-wait", "soon"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Invalid value for '--lock-wait'" in bad.stderr


def test_readers_never_queue_long_behind_a_waiting_migrate(tmp_path, database_url):
    """The outage lock_timeout prevents: readers queued behind an ALTER TABLE that waits."""
    root = applied_busy_table(tmp_path, database_url)
    latencies: list[float] = []
    stop = threading.Event()

    def read():
        with connect(database_url, autocommit=True) as reader:
            while not stop.is_set():
                started = time.monotonic()
                reader.execute("SELECT count(*) FROM busy")
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    with connect(database_url) as holder:
        holder.execute("SELECT * FROM busy")  # a long transaction that has read the table
        reader = threading.Thread(target=read)
        reader.start()
        try:
            code, lines = run(root, database_url, lock_timeout=0.5, lock_wait=4)
        finally:
            stop.set()
            reader.join()
        holder.rollback()

    assert code == 1, lines
    assert len(latencies) > 20
    # Without the timeout a reader would wait the whole 4 s; with it, one attempt at most.
    assert max(latencies) < 1.5, sorted(latencies)[-5:]


@pytest.mark.parametrize("key", [ADVISORY_LOCK_KEY, -ADVISORY_LOCK_KEY, -1], ids=["migrate", "negative", "minus-one"])
def test_advisory_lock_holders_finds_the_session_holding_a_key(database_url, key):
    from specql.lockwait import advisory_lock_holders, describe_backends

    with connect(database_url, autocommit=True, application_name="it's me") as holder, \
            connect(database_url, autocommit=True) as other:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        holder.execute("SELECT pg_advisory_lock(%s)", [key + 1])  # a neighbouring key is not it
        pid = holder.info.backend_pid
        assert advisory_lock_holders(other, key) == [pid]
        assert advisory_lock_holders(holder, key) == []  # never ourselves
        described = describe_backends(other, [pid, 999_999_999])
        assert described[0].startswith(f"pid {pid} ('it''s me', user ")
        assert "connected at " in described[0] and "idle" in described[0]
        assert described[1] == "pid 999999999"  # gone: still named
