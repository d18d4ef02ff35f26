"""Generated tests of multi-step operations (SPEC §8): seeding that makes the steps do something,
a plain-SQL replay of the steps that says what each should do, and readers of the steps' rows.

Why its own module: a multi-step run is checked against an expectation that does not come
from the routine. The *replay* runs each step as ONE plain statement, in run order, inside a
transaction that is rolled back: a select is one SELECT of its condition, an update or delete
one UPDATE/DELETE of its condition (an output it walks read from the replay's own outputs),
an insert or upsert one INSERT ... SELECT of its records, a custom_function one call. It runs
in a temporary PL/pgSQL function named like the operation, with the operation's parameters
and a `_result` of its own, so the step SQL the model wrote for the routine (conditions that
name `op.param` and read `specql.batch_operation_outputs` by `_result.operation_id`, values
that read `_rec`) runs unchanged, with no batches: what the routine's batching, chunking,
resuming or counting gets wrong shows as a difference. Per step it reports the rows it
changed (their keys), the records it walks, and what it put in its output.

Seeding: the operation's table is seeded (harness_tables) until the first step that walks a
condition matches a few batches; a nullable column that a step's condition reads is NULL in
a third of the rows, so `x IS NOT NULL` selects some rows and not others.
"""

from __future__ import annotations

import json
import re
from collections import Counter
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .contract import SCHEMA
from .harness_calls import NOT_BATCHES
from .harness_records import _unique_value
from .harness_tables import insert_rows, sample_value
from .harness_target import adapt, placeholders

STEPS_TABLE = f"{SCHEMA}.batch_operation_steps"
OUTPUTS_TABLE = f"{SCHEMA}.batch_operation_outputs"
RUNS_TABLE = f"{SCHEMA}.batch_operation_runs"
SEED_CAP = 20_000  # rows seeded at most, however rarely the first condition matches
WALKING = ("select", "update", "delete")


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _unquoted(text: str) -> str:
    """SQL text with its quoted strings left out (to find the column names it reads)."""
    return re.sub(r"'(?:[^']|'')*'", "''", text or "")


def chunks(n: int, size: int) -> list[int]:
    """n records cut every size: the lengths of the pieces."""
    return [min(size, n - i) for i in range(0, n, size)] if n > 0 else []


class Steps:
    """The steps of one operation on the harness's database: seed, replay, read the run's rows."""

    def __init__(self, h):
        self.h = h
        self.conn: psycopg.Connection = h.conn
        self.f: dict = h.f
        self.steps: list[dict] = self.f["steps"]

    # -- facts

    def on_target(self, step: dict) -> bool:
        return step["target"]["table"] == self.f["table"]

    def size_of(self, step: dict, size: int | None = None) -> int:
        """The batch size a step runs with: the batch_size argument (the harness gives one for
        batch_size: auto, the first batch's size, harness_calls), else the step's own."""
        if size is None and self.f.get("target_batch_time"):
            size = self.f["batch_size"]
        return size or step["batch_size"]

    def walking_step(self) -> dict | None:
        """The first step that walks a condition of the operation's table (its size sizes the seed)."""
        for s in self.steps:
            if self.on_target(s) and s["operation_type"] in WALKING and s["statement"]["driver"] == "keyset":
                return s
            if s["operation_type"] != "custom_function":
                return None
        return None

    def nullable_read(self) -> list[dict]:
        """Nullable columns of the operation's table that a step's condition reads."""
        text = " ".join(_unquoted(s["statement"]["where_sql"]) for s in self.steps
                        if self.on_target(s) and s["statement"]["where_sql"])
        return [c for c in self.f["columns"]
                if c["nullable"] and not c["primary_key"] and re.search(rf"\b{re.escape(c['name'])}\b", text)]

    # -- seeding

    def seed(self, at_least: int | None = None) -> dict:
        """Seed the operation's table until its first walking step matches at_least rows (by
        default two and a half of its batches); the parameters to call the routine with."""
        walker = self.walking_step()
        wanted = at_least if at_least is not None else (int(walker["batch_size"] * 2.5) + 1 if walker else 0)
        # no walking step: a few rows (a later step may still read the table)
        chunk = max(200, self.f["batch_size"] * 3) if walker else 200
        while True:
            self.h.seed(min(chunk, SEED_CAP - self.h.seeded))
            self.null_some()
            params = {**self.h.params(), **self.source_records()}
            if walker is None or self.h.seeded >= SEED_CAP or self.matching(walker, params) >= wanted:
                self.seed_other_tables()
                return params
            chunk *= 2

    def seed_other_tables(self) -> None:
        """Rows in each other table a step works on (its target_entity): 2.5 of its batches, once."""
        seeded: set[str] = set()
        for step in self.steps:
            table = step["target"]["other_table"]
            if table is None or table["table"] in seeded:
                continue
            seeded.add(table["table"])
            count = self.conn.execute(f"SELECT count(*) FROM {table['table']}").fetchone()[0]
            insert_rows(self.conn, table, count + 1, count + int(step["batch_size"] * 2.5) + 1,
                        compared_values=self.f["compared_values"])

    def source_records(self) -> dict[str, list[dict]]:
        """Records for each jsonb parameter a step on the operation's table takes as its
        data_source: two and a half of its batches, values from the fields' columns (as
        harness_records makes a single-step insert's)."""
        out: dict[str, list[dict]] = {}
        for step in self.steps:
            name = step["statement"]["source_param"]
            if not name or not self.on_target(step):
                continue
            fields = [(a["ref"], self.h.column(a["column"])) for a in step["statement"]["assignments"]
                      if a["kind"] == "record"]
            identifying = set(step["statement"]["conflict_columns"])
            references = {c["name"]: self.h.reference_values(c) for _, c in fields if c["references"]}
            records = []
            for i in range(int(step["batch_size"] * 2.5) + 1):
                rec = {}
                for field, column in fields:
                    if column["name"] in references:
                        rec[field] = references[column["name"]][i % len(references[column["name"]])]
                    elif column["primary_key"] or column["unique"] or column["name"] in identifying:
                        rec[field] = _unique_value(column, i)
                    else:
                        rec[field] = sample_value(column["sql_type"], i)
                records.append(rec)
            out[name] = records
        return out

    def null_some(self) -> None:
        """A third of the rows get NULL in each nullable column a condition reads (each its own third)."""
        pk = sql.SQL(self.h.pk_column["ident"])
        for c in self.nullable_read():
            self.conn.execute(sql.SQL("UPDATE {t} SET {c} = NULL WHERE abs(hashtext({salt} || {k}::text)) % 3 = 0").format(
                t=self.h.table, c=sql.SQL(c["ident"]), salt=sql.Literal(f"null:{c['name']}:"), k=pk))
        self.conn.execute(sql.SQL("ANALYZE {}").format(self.h.table))

    def matching(self, step: dict, params: dict) -> int:
        """Rows of the operation's table a step's condition matches now (its count_sql, $n typed)."""
        where = step["statement"]["count_sql"]
        query = sql.SQL("SELECT count(*) FROM {}").format(self.h.table)
        if where:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                self.h.table, sql.SQL(placeholders(where, self.f["params"])))
        args = {f"p{i}": adapt(params.get(p["name"]), p["sql_type"]) for i, p in enumerate(self.f["params"], start=1)}
        return self.conn.execute(query, args).fetchone()[0]

    # -- stand-ins for functions whose rows later steps read

    def stood_in(self) -> list[dict]:
        """custom_function steps whose output a later step reads: a stand-in may replace them."""
        return [s for s in self.steps if s["operation_type"] == "custom_function" and s["output"] and s["output"]["used"]]

    def stand_in(self) -> None:
        """Replace each function of stood_in() (the project's, which may read tables the tests
        do not seed) by a stand-in of the same signature and result that writes nothing: one
        row per key of an array input (the first result column of the key's type is the key),
        else, for rows a later step reads as keys, every other key of its table (up to 2.5
        batches), else 2.5 batches of rows; every other column a value of its type from the
        row number."""
        for step in self.stood_in():
            call = step["call"]
            found = self.conn.execute(
                "SELECT p.oid, format('%%I.%%I', n.nspname, p.proname), pg_get_function_arguments(p.oid), "
                "pg_get_function_result(p.oid), p.prorettype::regtype::text, "
                "coalesce(p.proallargtypes, p.proargtypes::oid[])::regtype[]::text[], p.proargnames, p.proargmodes::text[] "
                "FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace "
                "WHERE p.oid = to_regprocedure(%s)", (call["signature"],)).fetchone()
            if found is None:
                continue  # the step fails, named: the tests with the real functions say so
            _, name, arguments, result, rettype, types, names, modes = found
            columns = [(n, t) for n, t, m in zip(names or [], types or [], modes or []) if m in ("t", "o")]
            array_input = (call["input_type"] or "").endswith("[]")
            element = (call["input_type"] or "")[:-2] if array_input else None
            consumer = next((c for c in self.steps if c["statement"]["key_output"] == step["output"]["name"]), None)
            if array_input:
                rows = "unnest($1) WITH ORDINALITY AS _u(k, i)"
            elif consumer is not None:
                # rows read as keys by a later step: every other key of that step's table
                t = consumer["target"]
                element = self.conn.execute(
                    "SELECT a.atttypid::regtype::text FROM pg_catalog.pg_attribute AS a "
                    "WHERE a.attrelid = %s::regclass AND a.attname = %s", (t["table"], t["pk"])).fetchone()[0]
                rows = (f"(SELECT {t['pk_ident']} AS k, row_number() OVER (ORDER BY {t['pk_ident']}) AS i FROM {t['table']} "
                        f"WHERE abs(hashtext({t['pk_ident']}::text)) % 2 = 0 "
                        f"ORDER BY {t['pk_ident']} LIMIT {int(step['batch_size'] * 2.5) + 1}) AS _u")
            else:
                rows = f"(SELECT NULL AS k, g AS i FROM generate_series(1, {int(step['batch_size'] * 2.5) + 1}) AS g) AS _u"
            values, keyed = [], False
            for col, sql_type in (columns or [(None, rettype)]):
                if element is not None and not keyed and self.conn.execute(
                        "SELECT %s::regtype = %s::regtype", (sql_type, element)).fetchone()[0]:
                    values.append("_u.k")
                    keyed = True
                else:
                    values.append(self.sample_sql(col or "value", sql_type))
            self.conn.execute(
                f"CREATE OR REPLACE FUNCTION {name}({arguments}) RETURNS {result} LANGUAGE sql "
                f"AS $specql_stand_in$ SELECT {', '.join(values)} FROM {rows} ORDER BY _u.i $specql_stand_in$")

    @staticmethod
    def sample_sql(column: str, sql_type: str) -> str:
        """A value of sql_type for row _u.i (distinct per row where the type allows)."""
        label = _literal(f"stand-in {column} ")
        base = sql_type.lower()
        if base == "uuid":
            return f"md5({label} || _u.i)::uuid"
        if base in ("integer", "bigint", "smallint"):
            return f"_u.i::{base}"
        if base.startswith("numeric") or base in ("real", "double precision"):
            return f"round(_u.i * 1.25, 2)::{sql_type}"
        if base in ("text", "character varying") or base.startswith("character varying"):
            return f"({label} || _u.i)::{sql_type}"
        if base == "boolean":
            return "_u.i % 2 = 0"
        if base.startswith("timestamp"):
            return f"(timestamptz '2024-03-01 12:00+00' - _u.i * interval '1 hour')::{sql_type}"
        if base == "date":
            return "(date '2024-03-01' + _u.i::integer)"
        if base == "jsonb":
            return "jsonb_build_object('n', _u.i)"
        return f"NULL::{sql_type}"

    # -- the replay

    def replay(self, params: dict) -> list[dict]:
        """What each step should do from the data as it is now: per step, `processed` (rows it
        changes; a select's rows; 1 for a call), `walked` (the records its batches take),
        `output` (what it puts in its output), `keys` (the keys it changed, as text).
        Nothing stays: the transaction is rolled back."""
        given = [p for p in self.f["params"] if p["name"] in params]
        with self.conn.transaction(force_rollback=True):
            self.conn.execute(self.replay_function())
            args = sql.SQL(", ").join(
                sql.SQL("{} => {}::{}").format(sql.SQL(p["ident"]), sql.Placeholder(p["name"]), sql.SQL(p["sql_type"]))
                for p in given)
            row = self.conn.execute(
                sql.SQL("SELECT pg_temp.{}({})").format(sql.SQL(self.f["name_ident"]), args),
                {p["name"]: adapt(params[p["name"]], p["sql_type"]) for p in given}).fetchone()
        self.replayed_rows = row[0]["rows"]
        return row[0]["steps"]

    def volatile_columns(self) -> set[str]:
        """Columns of the operation's table a step sets to a value of the moment (now(), a new
        key, a sequence): the replay's and the run's differ there."""
        volatile = re.compile(r"now\(|clock_timestamp|statement_timestamp|transaction_timestamp|current_time"
                              r"|localtime|random|gen_random_uuid|uuidv|nextval", re.I)
        return {a["column"] for s in self.steps if self.on_target(s)
                for a in s["statement"]["assignments"] if a["kind"] == "sql" and volatile.search(a["sql"])}

    def differences(self, snapshot: dict[str, str]) -> list[str]:
        """Keys of rows in both the replay's final table and `snapshot` (key -> row as jsonb
        text, Targets.snapshot) whose columns differ, but for volatile_columns()."""
        skip = self.volatile_columns()
        differ = []
        for key in sorted(set(snapshot) & set(self.replayed_rows)):
            have, want = json.loads(snapshot[key]), self.replayed_rows[key]
            if {c: v for c, v in have.items() if c not in skip} != {c: v for c, v in want.items() if c not in skip}:
                differ.append(key)
        return differ

    def replay_function(self) -> str:
        f = self.f
        config = self.conn.execute(
            "SELECT p.proconfig FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname = %s LIMIT 1", (f["schema"], f["name"])).fetchone()
        path = next((c.split("=", 1)[1] for c in (config[0] if config and config[0] else [])
                     if c.startswith("search_path=")), "pg_catalog, public, pg_temp")
        args = ", ".join(f"{p['ident']} {p['sql_type']}" for p in f["params"])
        body = "\n".join(self.step_sql(s) for s in self.steps)
        return f"""
CREATE FUNCTION pg_temp.{f['name_ident']}({args}) RETURNS jsonb LANGUAGE plpgsql
SET search_path TO {path}
AS $specql_replay$
#variable_conflict use_column
DECLARE
    _result {SCHEMA}.batch_operation_result;
    _n bigint;
    _w bigint;
    _o bigint;
    _keys text[];
    _items jsonb[];
    _out jsonb := '[]';
BEGIN
    _result.operation_id := gen_random_uuid();
{body}
    RETURN jsonb_build_object('steps', _out, 'rows',
        (SELECT coalesce(jsonb_object_agg(_t.{self.h.pk_column['ident']}::text, to_jsonb(_t)), '{{}}') FROM {f['table']} AS _t));
END
$specql_replay$"""  # executed without parameters: a % in it is the SQL's own

    def step_sql(self, s: dict) -> str:
        st, t, out = s["statement"], s["target"], s["output"]
        table, pk = t["table"], t["pk_ident"]
        where = f" WHERE ({st['where_sql']})" if st["where_sql"] else ""
        lines = [f"    -- step {s['number']}: {s['name']} ({s['operation_type']})", "    _o := NULL; _keys := NULL;"]
        kind = s["operation_type"]
        if kind == "select":
            lines.append(f"    SELECT count(*), coalesce(array_agg({pk}::text ORDER BY {pk}), '{{}}') INTO _n, _keys FROM {table}{where};")
            # a walk takes the matching rows; a select over an output or id array, their keys
            lines.append(f"    _w := {'_n' if st['driver'] == 'keyset' else self.walked_sql(s)};")
            if out:
                lines.append(f"    INSERT INTO {OUTPUTS_TABLE} (operation_id, output, chunk, keys, records) "
                             f"SELECT _result.operation_id, {_literal(out['name'])}, 1, _keys, "
                             f"(SELECT jsonb_agg(to_jsonb(_t) ORDER BY _t.{pk}) FROM {table} AS _t WHERE _t.{pk}::text = ANY(_keys));")
                lines.append("    _o := _n;")
            lines.append("    _keys := '{}';  -- a select changes nothing")
        elif kind in ("update", "delete"):
            lines.append(f"    _w := {self.walked_sql(s)};")
            if kind == "update":
                sets = ", ".join(f"{t['columns'][a['column']]} = {a['sql']}" for a in st["assignments"])
                change = f"UPDATE {table} SET {sets}{where}"
            else:
                change = f"DELETE FROM {table}{where}"
            lines.append(f"    WITH _c AS ({change} RETURNING {table}.{pk}::text AS _k) "
                         f"SELECT count(*), coalesce(array_agg(_k), '{{}}') INTO _n, _keys FROM _c;")
            if st["driver"] == "keyset":
                lines.append("    _w := _n;  -- a walk takes the matching rows")
        elif kind in ("insert", "upsert"):
            source = self.records_sql(s)
            lines.append(f"    SELECT count(*) INTO _w FROM {source};")
            cols = ", ".join(t["columns"][a["column"]] for a in st["assignments"])
            values = ", ".join(a["sql"] for a in st["assignments"])
            conflict = ""
            if kind == "upsert":
                target = ", ".join(t["columns"][c] for c in st["conflict_columns"])
                updates = ", ".join(f"{t['columns'][c]} = EXCLUDED.{t['columns'][c]}" for c in st["conflict_updates"])
                conflict = f" ON CONFLICT ({target}) " + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING")
            elif st["ignore_conflicts"]:
                conflict = " ON CONFLICT DO NOTHING"
            lines.append(f"    WITH _c AS (INSERT INTO {table} ({cols}) SELECT {values} FROM {source}{conflict} "
                         f"RETURNING {table}.{pk}::text AS _k) SELECT count(*), coalesce(array_agg(_k), '{{}}') INTO _n, _keys FROM _c;")
            if out and out["used"]:
                lines.append(f"    INSERT INTO {OUTPUTS_TABLE} (operation_id, output, chunk, keys) "
                             f"VALUES (_result.operation_id, {_literal(out['name'])}, 1, _keys);")
                lines.append("    _o := _n;")
        else:  # custom_function: one call
            call = s["call"]
            invoke = f"{call['ident']}({call['input_sql'] or ''})"
            if out and out["used"]:
                lines.append(f"    SELECT coalesce(array_agg(to_jsonb(_r)), '{{}}') INTO _items FROM {invoke} AS _r;")
                keys = (f"ARRAY(SELECT (_e #>> '{{}}')::{out['key_type']}::text FROM unnest(_items) AS _e)"
                        if out["stores_keys"] else "NULL")
                records = "to_jsonb(_items)" if out["stores_records"] else "NULL"
                lines.append(f"    INSERT INTO {OUTPUTS_TABLE} (operation_id, output, chunk, keys, records) "
                             f"VALUES (_result.operation_id, {_literal(out['name'])}, 1, {keys}, {records});")
                lines.append("    _o := cardinality(_items);")
            else:
                lines.append(f"    PERFORM {invoke};")
            lines.append("    _n := 1; _w := 1; _keys := '{}';")
        lines.append("    _out := _out || jsonb_build_object('step', " + _literal(s["name"]) +
                     ", 'processed', _n, 'walked', _w, 'output', _o, 'keys', to_jsonb(_keys));")
        return "\n".join(lines)

    def walked_sql(self, s: dict) -> str:
        """The records an update's or delete's batches take: its output's keys, its id array's."""
        st = s["statement"]
        if st["driver"] == "output_keys":
            return (f"(SELECT coalesce(sum(cardinality(_o.keys)), 0) FROM {OUTPUTS_TABLE} AS _o "
                    f"WHERE _o.operation_id = _result.operation_id AND _o.output = {_literal(st['key_output'])})")
        if st["driver"] == "keys" and st["key_param"]:
            param = next(p for p in self.f["params"] if p["name"] == st["key_param"])
            return f"coalesce(cardinality({self.f['name_ident']}.{param['ident']}), 0)"
        return "0"

    def records_sql(self, s: dict) -> str:
        """An insert's or upsert's records, each as _rec: an earlier step's output, or a jsonb parameter."""
        st = s["statement"]
        if st["source_output"]:
            return (f"(SELECT _e._rec FROM {OUTPUTS_TABLE} AS _o, jsonb_array_elements(_o.records) WITH ORDINALITY "
                    f"AS _e(_rec, _i) WHERE _o.operation_id = _result.operation_id AND _o.output = "
                    f"{_literal(st['source_output'])} ORDER BY _o.chunk, _e._i) AS _source")
        param = next(p for p in self.f["params"] if p["name"] == st["source_param"])
        return (f"(SELECT _e AS _rec FROM jsonb_array_elements({self.f['name_ident']}.{param['ident']}) "
                f"AS _e) AS _source")

    def expected_batches(self, replayed: list[dict], size: int | None = None) -> int:
        """The batches a run takes: a walk cuts the records it takes every batch size (a step
        reading an output takes its keys or records in order, a batch running on from one
        chunk into the next); a call is one batch."""
        total = 0
        for s, r in zip(self.steps, replayed):
            own = self.size_of(s, size)
            total += 1 if s["operation_type"] == "custom_function" else len(chunks(r["walked"], own))
        return total

    def touches_expected(self, replayed: list[dict], table: str) -> Counter:
        """How often each row of `table` changes in an uninterrupted run: once per step that changes it."""
        return Counter(k for s, r in zip(self.steps, replayed) if s["target"]["table"] == table for k in r["keys"])

    # -- what the run wrote

    def step_rows(self, operation_id) -> list[dict]:
        cur = self.conn.cursor(row_factory=dict_row)
        return cur.execute(f"SELECT * FROM {STEPS_TABLE} WHERE operation_id = %s ORDER BY step_number",
                           (operation_id,)).fetchall()

    def step_log(self, operation_id) -> list[tuple]:
        """(batch_number, step, records_processed, records_failed, batch_size) of each logged batch."""
        return self.conn.execute(
            sql.SQL("SELECT batch_number, step, records_processed, records_failed, batch_size FROM {} "
                    f"WHERE operation_id = %s AND status NOT IN {NOT_BATCHES} ORDER BY batch_number").format(
                sql.SQL(self.f["log_table"])), (operation_id,)).fetchall()

    def outputs_left(self, operation_id) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {OUTPUTS_TABLE} WHERE operation_id = %s",
                                 (operation_id,)).fetchone()[0]

    def keys_of(self, table: str, pk_ident: str) -> set[str]:
        return {r[0] for r in self.conn.execute(f"SELECT {pk_ident}::text FROM {table}").fetchall()}

    # -- interrupting a run

    def cancel_on_first_write(self, table: str) -> None:
        """A run of the operation gets a cancel request from its first statement that writes
        `table`: the step it is in stops after that batch."""
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM {SCHEMA}.cancel_operation(r.operation_id) FROM {RUNS_TABLE} AS r
                WHERE r.operation = {_literal(self.f["name"])} AND r.status = 'running';
                RETURN NULL;
            END $$""")
        self.conn.execute(f"CREATE TRIGGER specql_test_cancel AFTER INSERT OR UPDATE OR DELETE ON {table} "
                          "FOR EACH STATEMENT EXECUTE FUNCTION public.specql_test_cancel()")

    def stop_cancelling(self, table: str) -> None:
        self.conn.execute(f"DROP TRIGGER specql_test_cancel ON {table}")

    def record_touches(self, table: str, pk_ident: str) -> None:
        """From now on each committed change of a row of `table` leaves its key in a table."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS public.specql_test_step_touches (key text NOT NULL)")
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_step_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    INSERT INTO public.specql_test_step_touches VALUES (OLD.{pk_ident}::text);
                ELSE
                    INSERT INTO public.specql_test_step_touches VALUES (NEW.{pk_ident}::text);
                END IF;
                RETURN NULL;
            END $$""")
        self.conn.execute(f"CREATE TRIGGER specql_test_step_touch AFTER INSERT OR UPDATE OR DELETE ON {table} "
                          "FOR EACH ROW EXECUTE FUNCTION public.specql_test_step_touch()")

    def touches(self) -> Counter:
        return Counter(r[0] for r in self.conn.execute("SELECT key FROM public.specql_test_step_touches").fetchall())


__all__ = ["Steps", "chunks"]
