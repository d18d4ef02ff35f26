"""pytest plugin (entry point `specql`): a fresh database with the migrations applied.

Generated test modules live in <out>/tests and their migrations in <out>/migrations.
The server is SPECQL_DATABASE_URL (or DATABASE_URL) when set, else an embedded
PostgreSQL started once per test run. The migrations are applied once into a template
database; every test gets a copy of it (CREATE DATABASE ... TEMPLATE), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

from . import database
from .migrate import migrate

MIGRATIONS_ENV = "SPECQL_MIGRATIONS"
TEMPLATE_ENV = "SPECQL_TEMPLATE_DATABASE"  # set by `specql test run`: migrations already applied there


@pytest.fixture(scope="session")
def specql_server_url():
    with database.server_url(None) as url:
        yield url


@pytest.fixture(scope="session")
def _specql_templates(specql_server_url):
    """migrations folder -> name of a template database with it applied."""
    made: dict[Path, str] = {}
    yield specql_server_url, made
    given = os.environ.get(TEMPLATE_ENV)
    with contextlib.closing(database.connect(specql_server_url, autocommit=True)) as conn:
        for name in set(made.values()) - {given}:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrations_for(request) -> Path:
    configured = os.environ.get(MIGRATIONS_ENV)
    if configured:
        return Path(configured)
    return Path(request.path).resolve().parent.parent / "migrations"


@pytest.fixture
def specql_database_url(request, _specql_templates):
    """URL of a fresh database holding the migrations next to the test module's folder."""
    server, made = _specql_templates
    folder = _migrations_for(request)
    if folder not in made and os.environ.get(TEMPLATE_ENV):
        template = os.environ[TEMPLATE_ENV]
        made[folder] = template
    elif folder not in made:
        name = f"specql_tmpl_{uuid.uuid4().hex[:12]}"
        with contextlib.closing(database.connect(server, autocommit=True)) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made[folder] = name
        lines: list[str] = []
        if migrate(folder, database.replace_dbname(server, name), echo=lines.append) != 0:
            pytest.fail("applying the migrations failed:\n" + "\n".join(lines), pytrace=False)
    name = f"specql_test_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(database.connect(server, autocommit=True)) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{made[folder]}"')
    try:
        yield database.replace_dbname(server, name)
    finally:
        with contextlib.closing(database.connect(server, autocommit=True)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def specql_db(specql_database_url):
    """An autocommit connection to the fresh database."""
    import psycopg

    with psycopg.connect(specql_database_url, autocommit=True) as conn:
        yield conn
