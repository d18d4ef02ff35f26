"""Odd identifiers, hostile sessions and re-application of generated SQL on real servers."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from helpers import call, connect, generate_and_apply, write_entities

ODD = """
name: user
schema: "Mixed Case"
fields:
  id: bigint
  "select": string
  "Mixed Case": integer
  'quote"d': string
  order: timestamp
patterns:
  - name: batch_operations
    operation: "Touch Users"
    operation_type: update
    update_data:
      "select": ":user"
      "Mixed Case": 7
      order: "NOW()"
    where_condition: '"Mixed Case" < :limit AND "select" IS DISTINCT FROM ''it''''s'''
    params: {user: text}
    batch_size: 10
"""


def test_reserved_and_odd_identifiers(database_url_any, tmp_path):
    entities = write_entities(tmp_path / "e", user=ODD)
    generate_and_apply(database_url_any, entities, tmp_path / "out")
    with connect(database_url_any) as conn:
        conn.execute('INSERT INTO "Mixed Case"."user" (id, "select", "Mixed Case") '
                     "SELECT g, 'x', g FROM generate_series(1, 95) g")
        r = call(conn, '"Mixed Case"."Touch Users"', user="it's", limit=50)
        assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", 49, 5)
        rows = conn.execute('SELECT count(*) FROM "Mixed Case"."user" '
                            "WHERE \"Mixed Case\" = 7 AND \"select\" = 'it''s' AND \"order\" IS NOT NULL").fetchone()
        assert rows == (49,)
        # the condition's own literal 'it''s' now excludes every row: nothing more to do
        assert call(conn, '"Mixed Case"."Touch Users"', user="it's", limit=50)["processed_records"] == 0


SHADOW = '''
name: account
fields:
  id: uuid
  touched_at: timestamp
patterns:
  - name: batch_operations
    operation: touch_accounts
    operation_type: update
    update_data: {touched_at: "NOW()"}
    where_condition: "id = ANY(:ids)"
'''


def test_pinned_search_path_ignores_a_hostile_schema(database_url, tmp_path):
    entities = write_entities(tmp_path / "e", account=SHADOW)
    generate_and_apply(database_url, entities, tmp_path / "out")
    with connect(database_url) as conn:
        ids = [uuid.uuid4() for _ in range(3)]
        conn.execute("INSERT INTO public.account (id) SELECT unnest(%s::uuid[])", (ids,))
        conn.execute("CREATE SCHEMA evil")
        conn.execute("CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$")
        conn.execute("CREATE FUNCTION evil.cardinality(anyarray) RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$")
        conn.execute("SET search_path = evil, public")
        r = call(conn, "public.touch_accounts", ids=ids)
        assert r["processed_records"] == 3
        assert conn.execute("SELECT count(*) FROM public.account WHERE touched_at > '2000-01-01'").fetchone() == (3,)


def test_reapply_after_parameter_change_drops_the_old_signature(database_url_any, tmp_path):
    v1 = write_entities(tmp_path / "v1", account=SHADOW)
    generate_and_apply(database_url_any, v1, tmp_path / "out")
    v2 = write_entities(tmp_path / "v2", account=SHADOW.replace(
        'where_condition: "id = ANY(:ids)"', 'where_condition: "id = ANY(:account_ids) AND touched_at < :before"'))
    generate_and_apply(database_url_any, v2, tmp_path / "out")  # same folder: the new file is pending
    with connect(database_url_any) as conn:
        conn.execute("CREATE FUNCTION public.touch_accounts(x integer) RETURNS integer LANGUAGE sql AS 'SELECT 1'")
        signatures = sorted(r[0] for r in conn.execute(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'touch_accounts'").fetchall())
        assert signatures == ["touch_accounts(integer)", "touch_accounts(uuid[],timestamp with time zone,integer)"]
        applied = [r[0] for r in conn.execute("SELECT name FROM specql.schema_migrations ORDER BY name").fetchall()]
        assert len(applied) == 3  # runtime, v1's account file, v2's account file
        r = call(conn, "public.touch_accounts", account_ids=[], before=None)
        assert r["status"] == "completed"
        with pytest.raises(psycopg.errors.UndefinedFunction):
            call(conn, "public.touch_accounts", ids=[])
