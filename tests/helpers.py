"""Helpers for tests that generate SQL from entity YAML and run it on a real server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg

from specql.contract import RESULT_FIELDS
from specql.generate import generate
from specql.sqlnames import qi
from specql.migrate import migrate


def write_entities(folder: Path, **files: str) -> Path:
    """Write name=yaml pairs as folder/name.yaml (dedented) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def generate_and_apply(url: str, entities: Path, out: Path) -> list[Path]:
    """Generate migrations for `entities` into `out` and apply them with specql migrate."""
    result = generate([str(entities)], out)
    lines: list[str] = []
    code = migrate(out, url, echo=lines.append)
    assert code == 0, "\n".join(lines)
    return result.written


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit)


def call(conn: psycopg.Connection, routine: str, **args) -> dict:
    """Call a generated function with named arguments; the result row as a dict."""
    names = ", ".join(f"{qi(name)} => %({name})s" for name in args)
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(f"SELECT * FROM {routine}({names})", args).fetchone()


def call_procedure(conn: psycopg.Connection, routine: str, **args) -> dict:
    names = ", ".join(f"{qi(name)} => %({name})s" for name in args)
    cur = conn.cursor()
    row = cur.execute(f"CALL {routine}({names})", args).fetchone()
    # the INOUT result comes back as one composite column
    fields = RESULT_FIELDS
    cur2 = conn.cursor()
    values = cur2.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()
    return dict(zip(fields, values))


def batch_log(conn: psycopg.Connection, operation_id) -> list[tuple[int, int, int, str]]:
    return conn.execute(
        "SELECT batch_number, records_processed, records_failed, status FROM specql.batch_operation_logs "
        "WHERE operation_id = %s ORDER BY batch_number", (operation_id,)).fetchall()


def errors(conn: psycopg.Connection, operation_id) -> list[tuple]:
    return conn.execute(
        "SELECT batch_number, sqlstate, error_message, failed_records FROM specql.batch_operation_errors "
        "WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()
