"""A private PostgreSQL 15 primary's streaming standby for the throttle tests: made with
pg_basebackup -R, on its own socket directory and port, replay paused and resumed at will.
Kept apart from tests/test_throttle.py so that module stays about the behaviour."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import connect

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def pg15_or_skip():
    missing = [t for t in ("initdb", "pg_ctl", "pg_basebackup") if not (PG15_BIN / t).exists()]
    if missing:
        message = f"PostgreSQL 15 binaries not found in {PG15_BIN} ({', '.join(missing)})"
        if os.environ.get("SPECQL_REQUIRE_PG15") == "1":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def standby_of(primary_url: str):
    """A hot standby of the private cluster at *primary_url* (pg_basebackup -R), on its own
    socket directory and port, reporting to the primary every second; yields its URL."""
    from psycopg.conninfo import conninfo_to_dict

    from specql import database

    ids = database._system_user()
    where = Path(tempfile.mkdtemp(prefix="specql-standby-"))
    data = where / "data"
    pg_ctl = [str(PG15_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    try:
        if ids is not None:
            os.chown(where, *ids)
        primary = conninfo_to_dict(primary_url)
        database._run_as([str(PG15_BIN / "pg_basebackup"), "-h", primary["host"], "-p", str(primary["port"]),
                          "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "-c", "fast"], ids, where)
        options = (f"-c listen_addresses='' -k {shlex.quote(str(where))} -p 5433 -c hot_standby=on"
                   " -c wal_receiver_status_interval=1s")
        database._run_as(pg_ctl + ["-l", str(where / "server.log"), "-o", options, "start"], ids, where)
        yield f"postgresql://postgres@/postgres?host={where}&port=5433"
    finally:
        try:
            if (data / "postmaster.pid").exists():
                database._run_as(pg_ctl + ["-m", "immediate", "stop"], ids, where)
        finally:
            shutil.rmtree(where, ignore_errors=True)


def lag(conn, since) -> float:
    """The replay lag the throttle reads, from standby replies sent more than a second after *since*
    (a reply just after a pause may still carry the lag of an earlier burst)."""
    return conn.execute("SELECT coalesce(extract(epoch FROM max(replay_lag)), 0) FROM pg_stat_replication "
                        "WHERE replay_lsn IS DISTINCT FROM sent_lsn AND reply_time > %s + interval '1 second'",
                        (since,)).fetchone()[0]


@contextmanager
def lagging(primary: str, standby: str, seconds: float = 1.5):
    """Replay paused on the standby, until the primary sees a replay lag over *seconds*."""
    with connect(standby) as s, connect(primary) as p:
        s.execute("SELECT pg_wal_replay_pause()")
        try:
            since = p.execute("SELECT now()").fetchone()[0]
            p.execute("CREATE TEMP TABLE wal_maker AS SELECT 1")  # some WAL to replay
            wait_for(lambda: lag(p, since) > seconds, 20, "replay lag")
            yield s
        finally:
            s.execute("SELECT pg_wal_replay_resume()")
