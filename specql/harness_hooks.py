"""Hooks, audit rows, soft delete and skipped records, for generated tests (issue 14).

Why its own module: a generated test of an operation with hooks must see each call of its
hook functions (which batch, which rows, which fields); it replaces them, in its throwaway
database, with functions that record every call in a table (and can be told to raise, or to
change the target table, so the tests can show a failing hook fails its batch and a hook
that writes to the table neither loops nor is counted). The audit rows and the soft-delete
state are read back here too.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from .contract import SCHEMA

HOOK_CALLS = "public.specql_test_hook_calls"
HOOK_ARGS = "uuid, integer, jsonb, jsonb, text[]"


class HookCalls:
    """Recording hooks, audit rows, soft-delete state."""

    conn: psycopg.Connection
    f: dict
    table: sql.Composable
    pk: sql.Composable

    def record_hooks(self) -> None:
        """Replace each hook function with one that records its calls; `fail_batch` in the
        calls table's settings makes a hook raise on that batch, `touch` makes it update
        every row of the target table (a no-op change, a new version of each row)."""
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {HOOK_CALLS} (id bigserial PRIMARY KEY, hook text, "
                          "operation_id uuid, batch_number integer, old_rows jsonb, new_rows jsonb, "
                          "changed_fields text[])")
        self.conn.execute("CREATE TABLE IF NOT EXISTS public.specql_test_hook_settings "
                          "(hook text PRIMARY KEY, fail_batch integer, touch boolean DEFAULT false)")
        pk = self.f["pk"]
        for when, fn in (self.f.get("hooks") or {}).items():
            if fn is None:
                continue
            touch = sql.SQL("UPDATE {} SET {} = {}").format(self.table, self.pk, self.pk).as_string(self.conn)
            self.conn.execute(f"DROP FUNCTION IF EXISTS {fn}({HOOK_ARGS})")
            self.conn.execute(f"""
                CREATE FUNCTION {fn}(operation_id uuid, batch_number integer, old_rows jsonb, new_rows jsonb,
                                     changed_fields text[]) RETURNS void LANGUAGE plpgsql AS $hook$
                DECLARE s record;
                BEGIN
                    INSERT INTO {HOOK_CALLS} (hook, operation_id, batch_number, old_rows, new_rows, changed_fields)
                    VALUES ('{when}', operation_id, batch_number, old_rows, new_rows, changed_fields);
                    SELECT * INTO s FROM public.specql_test_hook_settings WHERE hook = '{when}';
                    IF s.fail_batch = batch_number THEN
                        RAISE EXCEPTION 'planted hook failure in batch %', batch_number USING ERRCODE = 'check_violation';
                    END IF;
                    IF s.touch THEN
                        {touch};
                    END IF;
                END $hook$""")
        self._hook_pk = pk

    def hook_setting(self, when: str, *, fail_batch: int | None = None, touch: bool = False) -> None:
        self.conn.execute("INSERT INTO public.specql_test_hook_settings (hook, fail_batch, touch) VALUES (%s, %s, %s) "
                          "ON CONFLICT (hook) DO UPDATE SET fail_batch = EXCLUDED.fail_batch, touch = EXCLUDED.touch",
                          (when, fail_batch, touch))

    def hook_calls(self, operation_id, when: str) -> list[dict]:
        """Each call of the `when` hook in this run, in order: batch_number, old_rows, new_rows, changed_fields."""
        rows = self.conn.execute(f"SELECT batch_number, old_rows, new_rows, changed_fields FROM {HOOK_CALLS} "
                                 "WHERE operation_id = %s AND hook = %s ORDER BY id", (operation_id, when)).fetchall()
        return [{"batch_number": b, "old_rows": o, "new_rows": n, "changed_fields": c} for b, o, n, c in rows]

    def audit_rows(self, operation_id) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT batch_number, record_key, action, old_row, new_row, changed_fields "
            f"FROM {SCHEMA}.batch_operation_audit WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()
        return [{"batch_number": b, "key": str(k[self.f["pk"]]), "action": a, "old_row": o, "new_row": n,
                 "changed_fields": c} for b, k, a, o, n, c in rows]

    def rows_by_key(self) -> dict[str, dict]:
        """Every row of the target as JSON (what to_jsonb makes of it), by key as text."""
        return {str(k): r for k, r in self.conn.execute(
            sql.SQL("SELECT {}::text, to_jsonb(t.*) FROM {} AS t").format(self.pk, self.table)).fetchall()}

    # -- soft delete

    def soft_delete_rows(self, keys: list[str], when: str = "now() - interval '2 days'") -> None:
        """Mark rows soft-deleted directly (deleted_at in the past), as an earlier run would."""
        self.conn.execute(sql.SQL("UPDATE {} SET deleted_at = " + when + ", deleted_by = 'test' "
                                  "WHERE {}::text = ANY(%s)").format(self.table, self.pk), (list(keys),))

    def deleted_keys(self) -> set[str]:
        return {str(k) for (k,) in self.conn.execute(
            sql.SQL("SELECT {}::text FROM {} WHERE deleted_at IS NOT NULL").format(self.pk, self.table)).fetchall()}

    def deletion_stats(self) -> tuple:
        return self.conn.execute(f"SELECT active, deleted, total FROM {self.f['deletion_stats']}()").fetchone()


def changed_fields(old: dict | None, new: dict | None) -> set[str]:
    """What specql.changed_fields computes for one pair, in Python: the fields that differ."""
    if old is None or new is None:
        return set((old or new or {}).keys())
    return {k for k, v in new.items() if json.dumps(old.get(k), sort_keys=True) != json.dumps(v, sort_keys=True)
            or k not in old}
