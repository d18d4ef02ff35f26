import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from specql.database import (
    DatabaseError,
    connect,
    local_server,
    redact_url,
    replace_dbname,
    resolve_database_url,
    server_url,
    throwaway_database,
)


@pytest.fixture
def no_env_urls(monkeypatch):
    monkeypatch.delenv("SPECQL_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return monkeypatch


def test_resolve_prefers_explicit_then_specql_then_database_url(no_env_urls):
    assert resolve_database_url(None) is None
    no_env_urls.setenv("DATABASE_URL", "postgresql://generic/db")
    assert resolve_database_url(None) == "postgresql://generic/db"
    no_env_urls.setenv("SPECQL_DATABASE_URL", "postgresql://specql/db")
    assert resolve_database_url(None) == "postgresql://specql/db"
    assert resolve_database_url("postgresql://explicit/db") == "postgresql://explicit/db"


def test_resolve_treats_empty_values_as_unset(no_env_urls):
    no_env_urls.setenv("SPECQL_DATABASE_URL", "")
    no_env_urls.setenv("DATABASE_URL", "postgresql://generic/db")
    assert resolve_database_url("") == "postgresql://generic/db"


def test_server_url_uses_configured_url_without_starting_anything(no_env_urls):
    no_env_urls.setenv("SPECQL_DATABASE_URL", "postgresql://nowhere.invalid/db")
    with server_url(None) as url:
        assert url == "postgresql://nowhere.invalid/db"
    with server_url("postgresql://explicit/db") as url:
        assert url == "postgresql://explicit/db"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql://postgres:@/other?host=/tmp/x"),
        ("postgresql://u:p@db.example:6543/app?sslmode=require", "postgresql://u:p@db.example:6543/other?sslmode=require"),
        ("postgres://u@h", "postgres://u@h/other"),
        ("postgresql:///app?host=/run/pg&dbname=app&port=5433", "postgresql:///other?host=/run/pg&port=5433"),
    ],
)
def test_replace_dbname_in_uris(url, expected):
    assert replace_dbname(url, "other") == expected


def test_replace_dbname_in_conninfo_strings():
    assert conninfo_to_dict(replace_dbname("host=/tmp/x dbname=app user=me", "other")) == {
        "host": "/tmp/x", "dbname": "other", "user": "me"}


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://me:s3cret@db.example/app", "postgresql://me@db.example/app"),
        ("postgresql://me@/app?host=/tmp&password=s3cret", "postgresql://me@/app?host=/tmp"),
    ],
)
def test_redact_url_drops_password(url, expected):
    assert redact_url(url) == expected


def test_redact_conninfo_drops_password():
    redacted = redact_url("host=db.example user=me password=s3cret")
    assert conninfo_to_dict(redacted) == {"host": "db.example", "user": "me"}


def test_throwaway_database_exists_then_is_dropped(pg_server_url):
    def exists(name):
        with connect(pg_server_url) as conn:
            return conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()[0] == 1

    with throwaway_database(pg_server_url, prefix="specql_dbtest") as url:
        lingering = connect(url)  # left open on purpose: the drop must force it out
        name = lingering.execute("SELECT current_database()").fetchone()[0]
        assert name.startswith("specql_dbtest_")
        assert exists(name)
    assert not exists(name)
    with pytest.raises(psycopg.OperationalError):
        lingering.execute("SELECT 1")
    lingering.close()


def test_two_throwaway_databases_are_distinct(pg_server_url):
    with throwaway_database(pg_server_url) as a, throwaway_database(pg_server_url) as b:
        assert a != b


def test_unreachable_server_is_one_line_database_error(tmp_path):
    url = f"postgresql://postgres:s3cret@/postgres?host={tmp_path}"
    with pytest.raises(DatabaseError) as excinfo:
        connect(url)
    message = str(excinfo.value)
    assert message.startswith(f"cannot connect to postgresql://postgres@/postgres?host={tmp_path}: ")
    assert "\n" not in message
    assert "s3cret" not in message


def test_malformed_url_is_database_error():
    with pytest.raises(DatabaseError, match="invalid database URL"):
        connect("not a url")


def test_local_server_without_binaries_is_database_error(tmp_path):
    with pytest.raises(DatabaseError, match="no PostgreSQL server binaries"):
        with local_server(tmp_path):
            pass


def test_servers_run_the_expected_major_version(server_url, request):
    expected = {"pg18": 18, "pg15": 15}[request.node.callspec.params["server_url"]]
    if expected == 18 and resolve_database_url(None):
        pytest.skip("pg18 is the configured external server; its version is not ours to check")
    with connect(server_url) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
    assert major == expected


def test_application_name_applies_unless_the_user_named_one(database_url, monkeypatch):
    monkeypatch.delenv("PGAPPNAME", raising=False)
    show = "SELECT current_setting('application_name')"
    with connect(database_url, application_name="specql migrate") as conn:
        assert conn.execute(show).fetchone()[0] == "specql migrate"
        conn.execute("RESET ALL")  # what migrate runs between files: the name stays
        assert conn.execute(show).fetchone()[0] == "specql migrate"
    sep = "&" if "?" in database_url else "?"
    with connect(f"{database_url}{sep}application_name=deploy-42", application_name="specql migrate") as conn:
        assert conn.execute(show).fetchone()[0] == "deploy-42"
    monkeypatch.setenv("PGAPPNAME", "from-env")
    with connect(database_url, application_name="specql migrate") as conn:
        assert conn.execute(show).fetchone()[0] == "from-env"
