"""Waiting on locks the way production needs it: bounded, named, interruptible.

``specql migrate`` waits on two kinds of lock: the advisory lock that serialises
migrate runs, and the table locks its DDL needs.  An unbounded wait is the classic
outage: an ``ALTER TABLE`` queued behind one long transaction blocks every reader of
that table behind *itself*.  So DDL runs under a short ``lock_timeout`` and is retried
with backoff, every wait is bounded, and the message names the session in the way
(pid, application_name, state, since when) so the operator knows whom to ask.

The session in the way of a waiting statement can only be seen from *another*
connection while the statement waits: :class:`BlockerWatch` opens one, lazily, only
when a statement has been running for a moment.

SIGTERM (what CI runners and systemd send) is turned into a KeyboardInterrupt, which
psycopg already handles well: it cancels the running query, the transaction rolls
back, the connection is closed and the server backend ends with it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

__all__ = ["APPLICATION_NAME", "BlockerWatch", "Terminated", "advisory_lock_holders", "check_client_connection",
           "describe_backends", "sigterm_as_interrupt", "take_advisory_lock"]

APPLICATION_NAME = "specql migrate"

# One line per backend; what pg_stat_activity shows a role without pg_read_all_stats for
# someone else's session is mostly NULL, hence the coalesces.
_DESCRIBE = """
SELECT pid,
       coalesce(quote_literal(nullif(application_name, '')), 'no application_name'),
       coalesce(usename::text, '?'),
       coalesce(state, 'state unknown'),
       to_char(xact_start AT TIME ZONE 'UTC', 'HH24:MI:SS'),
       extract(epoch FROM clock_timestamp() - xact_start)::int,
       to_char(backend_start AT TIME ZONE 'UTC', 'HH24:MI:SS'),
       left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 60)
  FROM pg_stat_activity
 WHERE pid = ANY(%s)
 ORDER BY xact_start NULLS LAST, pid
"""

# A bigint advisory key shows in pg_locks as two 32-bit halves (objsubid 1).
_ADVISORY_HOLDERS = """
SELECT pid FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND objsubid = 1
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = %s AND objid = %s AND pid <> pg_backend_pid()
"""


def describe_backends(conn: psycopg.Connection, pids: list[int]) -> list[str]:
    """``pid 123 ('psql', user app, idle in transaction, transaction started 18:02:11 UTC, 40 s ago, ...)``."""
    found = {}
    for pid, app, user, state, xact_at, xact_age, connected_at, query in conn.execute(_DESCRIBE, [pids]):
        since = (f"transaction started {xact_at} UTC, {xact_age} s ago" if xact_at
                 else f"connected at {connected_at} UTC" if connected_at else "since unknown")
        text = f"pid {pid} ({app}, user {user}, {state}, {since}"
        found[pid] = text + (f", last query: {query!r})" if query else ")")
    # A pid that has just gone is still worth naming.
    return [found.get(pid, f"pid {pid}") for pid in pids]


def advisory_lock_holders(conn: psycopg.Connection, key: int) -> list[int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    high, low = unsigned >> 32, unsigned & 0xFFFFFFFF
    return [pid for (pid,) in conn.execute(_ADVISORY_HOLDERS, [high, low])]


def take_advisory_lock(conn: psycopg.Connection, key: int, lock_wait: float, echo: Callable[[str], object]) -> bool:
    """Take the migrate lock (advisory *key*), waiting at most *lock_wait* seconds; False when it was not."""
    if conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
        return True
    holders = describe_backends(conn, advisory_lock_holders(conn, key))
    echo(f"waiting for another specql migrate to finish: the migrate lock is held by "
         f"{'; '.join(holders) or 'another session'}; giving up after {lock_wait:g} s")
    try:
        # A blocking wait (not polling) keeps our place in the lock's queue and shows
        # us in pg_locks as waiting; lock_timeout bounds it.
        conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{max(1, int(lock_wait * 1000))}ms"])
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
    except psycopg.errors.LockNotAvailable:
        holders = describe_backends(conn, advisory_lock_holders(conn, key))
        echo(f"error: gave up after {lock_wait:g} s waiting for the migrate lock, held by "
             f"{'; '.join(holders) or 'another session'}; nothing was applied")
        return False
    conn.execute("RESET lock_timeout")
    return True


def check_client_connection(conn: psycopg.Connection) -> None:
    """Have the server notice within seconds when we vanish (SIGKILL, a lost network).

    Otherwise a backend waiting on a lock for a client that is gone waits on, holding
    the migrate lock and queueing others behind it.  Linux servers only; elsewhere the
    setting is accepted and does nothing.
    """
    try:
        conn.execute("SET client_connection_check_interval = '2s'")
    except psycopg.Error:
        pass  # a server older than 14 lacks the setting: no worse than before


class BlockerWatch:
    """Records which sessions block backend *pid* while a statement of it runs.

    Used as ``with BlockerWatch(url, pid) as watch: ...``; afterwards ``watch.blockers``
    describes the last sessions seen in the way (empty when none was).  The second
    connection is opened only after *delay* seconds, so a quick file costs nothing.
    Everything here is best effort: a watcher that cannot connect just sees nothing.
    """

    def __init__(self, url: str, pid: int, *, delay: float = 0.5, interval: float = 0.2):
        self.url, self.pid, self.delay, self.interval = url, pid, delay, interval
        self.blockers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="specql-lock-watch", daemon=True)

    def __enter__(self) -> BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        if self._stop.wait(self.delay):
            return
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                 application_name=f"{APPLICATION_NAME} (lock watch)") as conn:
                while not self._stop.is_set():
                    pids = conn.execute("SELECT pg_blocking_pids(%s)", [self.pid]).fetchone()[0]
                    if pids:
                        self.blockers = describe_backends(conn, pids)
                    self._stop.wait(self.interval)
        except psycopg.Error:
            pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (the main thread only can install it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # Once is enough: a second SIGTERM must not interrupt the rollback and close.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
