#!/usr/bin/env python
"""Time hand-edited variants of the generated routines against the plain statement.

Each variant is the generated routine with a few textual edits (another statement shape
for one step), created next to it as bench.<routine>__<variant>.  For every size, every
repeat runs the plain statement and every variant on identical fresh tables, rotating the
order, and checks they all change the same rows.  This is how the suggestions in
bench/README.md were measured; the templates are not touched.

    /work/venv/bin/python bench/variants.py --case update_ids --batch-size 100
    /work/venv/bin/python bench/variants.py --case insert --sizes 100000,1000000 --repeat 3
    /work/venv/bin/python bench/variants.py --case insert --show path_slice   # print the SQL
    /work/venv/bin/python bench/variants.py --case delete --variants generated --before /tmp/old/migrations

An edit whose text is not found (the templates changed) makes that variant "n/a".
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B  # noqa: E402
from specql.database import connect, embedded_server, throwaway_database  # noqa: E402


@dataclass
class Variant:
    name: str
    what: str
    edits: list[tuple[str, str]] = field(default_factory=list)  # exact text -> text; {fn}, {bs}
    declare: str = ""  # extra DECLARE lines
    set_clause: str = ""  # e.g. "SET plan_cache_mode = force_generic_plan"


GENERIC = "SET plan_cache_mode = force_generic_plan"
# The function-level SET (and its comment) the templates emit since commit a247fa2.
GENERIC_LINE = re.compile(r"(?:--[^\n]*\n)*SET plan_cache_mode = force_generic_plan\n")
AUTO_PLANS = Variant("auto_plans", "as generated WITHOUT its 'SET plan_cache_mode = force_generic_plan' "
                     "(PostgreSQL's default plan choice; what the templates emitted before a247fa2)",
                     edits=[(GENERIC_LINE, "")])

# The batch's EXCEPTION clause (what makes the block a savepoint), up to the end of the block.
HANDLER = re.compile(r"\n        EXCEPTION WHEN OTHERS THEN\n.*?(?=\n        END;\n)", re.S)

NO_SAVEPOINT = Variant("no_savepoint", "diagnostic only: the batch block without its EXCEPTION clause "
                       "(no savepoint per batch; NOT a valid per_batch routine)", edits=[(HANDLER, "")])


def auto(v: Variant) -> Variant:
    """v without the generated function-level SET plan_cache_mode (PostgreSQL's default plan choice)."""
    return Variant(v.name + "_auto", v.what + "; without SET plan_cache_mode", [*v.edits, (GENERIC_LINE, "")],
                   v.declare, v.set_clause)


IDS_SLICE = "_keys := ARRAY(SELECT {fn}.ids[_g._i] FROM generate_series(_from, _to) AS _g(_i));"
PLPGSQL_LOOP = Variant(
    "plpgsql_loop", "FOR _i IN _from.._to LOOP _keys[_i - _from + 1] := ids[_i]; END LOOP  (no SQL statement "
    "sees the array, so no plan can copy it)",
    edits=[(IDS_SLICE, "_keys := '{{}}';\n"
                       "        FOR _i IN _from.._to LOOP\n"
                       "            _keys[_i - _from + 1] := {fn}.ids[_i];\n"
                       "        END LOOP;")])
FIXED_SERIES = Variant(
    "fixed_series", "_keys := ARRAY(SELECT ids[_from + _g._i] FROM generate_series(0, {bs1}) _g(_i) WHERE _g._i "
    "<= _to - _from)  (row estimate independent of _from/_to)",
    edits=[(IDS_SLICE, "_keys := ARRAY(SELECT {fn}.ids[_from + _g._i] FROM generate_series(0, {bs1}) AS _g(_i)"
                       " WHERE _g._i <= _to - _from);")])
PATH_SLICE = Variant(
    "path_slice", "_batch := jsonb_path_query_array(rows, '$[$f to $t]', ...) (a plpgsql simple expression: "
    "never custom-planned) + INSERT ... FROM jsonb_array_elements(_batch) AS _source(_rec)",
    declare="    _batch jsonb;",
    edits=[("        _batch_started := clock_timestamp();",
            "        _batch := jsonb_path_query_array({fn}.rows, '$[$f to $t]',\n"
            "                                         jsonb_build_object('f', _from, 't', _to));\n"
            "        _batch_started := clock_timestamp();"),
           ("FROM (SELECT {fn}.rows -> _g._i AS _rec\n"
            "                  FROM generate_series(_from, _to) AS _g(_i)) AS _source;",
            "FROM jsonb_array_elements(_batch) AS _source(_rec);")])


LISTED_ONLY = Variant(
    "listed_only", "every batch's keys listed first (SELECT ... LIMIT n, then = ANY(_keys)); no key range "
    "batches: what the templates generated before key ranges",
    edits=[("_ranged := _dense;", "_ranged := false;")])


VARIANTS: dict[str, list[Variant]] = {
    "update_ids": [
        Variant("generated", "as generated"),
        AUTO_PLANS,
        Variant("generic_plan", "+ SET plan_cache_mode = force_generic_plan", set_clause=GENERIC),
        PLPGSQL_LOOP, auto(PLPGSQL_LOOP),
        FIXED_SERIES, auto(FIXED_SERIES),
        Variant("naive_slice", "_keys := ids[_from:_to]  (copies the whole array per batch: the issue's 'naive')",
                edits=[(IDS_SLICE, "_keys := {fn}.ids[_from:_to];")]),
        NO_SAVEPOINT,
    ],
    "insert": [
        Variant("generated", "as generated"),
        AUTO_PLANS,
        Variant("generic_plan", "+ SET plan_cache_mode = force_generic_plan", set_clause=GENERIC),
        Variant("offset0", "OFFSET 0 in the source subquery (each element extracted once, not once per column)",
                edits=[("FROM generate_series(_from, _to) AS _g(_i)) AS _source;",
                        "FROM generate_series(_from, _to) AS _g(_i) OFFSET 0) AS _source;")]),
        PATH_SLICE, auto(PATH_SLICE),
    ],
    "update_cond": [
        Variant("generated", "as generated"),
        Variant("generic_plan", "+ SET plan_cache_mode = force_generic_plan", set_clause=GENERIC),
        LISTED_ONLY,
        NO_SAVEPOINT,
    ],
    "delete": [
        Variant("generated", "as generated"),
        Variant("generic_plan", "+ SET plan_cache_mode = force_generic_plan", set_clause=GENERIC),
        LISTED_ONLY,
        NO_SAVEPOINT,
    ],
}


def routine_text(migrations: Path, routine: str) -> str:
    for f in sorted(migrations.glob("*.sql")):
        text = f.read_text("utf-8")
        start = text.find(f"CREATE OR REPLACE FUNCTION {B.SCHEMA}.{routine}(")
        if start < 0:
            start = text.find(f"CREATE OR REPLACE PROCEDURE {B.SCHEMA}.{routine}(")
        if start >= 0:
            end = text.index("$specql$;", start) + len("$specql$;")
            return text[start:end]
    raise SystemExit(f"routine {routine} not found in {migrations}")


def variant_sql(base: str, routine: str, v: Variant, batch_size: int) -> str | None:
    """The variant's CREATE FUNCTION, or None when an edit no longer applies."""
    fmt = {"fn": routine, "bs": batch_size, "bs1": batch_size - 1}
    text = base
    for old, new in v.edits:
        new = new.format(**fmt)
        if isinstance(old, re.Pattern):
            text, n = old.subn(lambda _m: new, text, count=1)
        else:
            old = old.format(**fmt)
            n = text.count(old)
            text = text.replace(old, new)
        if n == 0:
            return None
    if v.declare:
        text = text.replace("DECLARE\n", "DECLARE\n" + v.declare + "\n", 1)
    if v.set_clause:
        if v.set_clause in text:
            return None  # the generated routine has it already
        text = text.replace("\nSET search_path", f"\n{v.set_clause}\nSET search_path", 1)
    name = f"{routine}__{v.name}" if v.name != "generated" else routine
    text = text.replace(f"FUNCTION {B.SCHEMA}.{routine}(", f"FUNCTION {B.SCHEMA}.{name}(", 1)
    return text.replace(f"{routine}.", f"{name}.")  # parameter qualifiers


def before_sql(migrations: Path, routine: str) -> str:
    """Another checkout's routine, renamed <routine>__before (it runs on this checkout's runtime)."""
    text = routine_text(migrations, routine)
    name = f"{routine}__before"
    text = text.replace(f"FUNCTION {B.SCHEMA}.{routine}(", f"FUNCTION {B.SCHEMA}.{name}(", 1)
    return text.replace(f"{routine}.", f"{name}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, choices=list(VARIANTS))
    ap.add_argument("--variants", help="comma-separated subset (default all)")
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quiet-wait", type=float, default=5)
    ap.add_argument("--show", metavar="VARIANT", help="print the variant's SQL and exit")
    ap.add_argument("--before", metavar="DIR", help="also time the routine of these generated migrations (another "
                    "commit's bench/entities) as the variant 'before', next to this checkout's runtime")
    args = ap.parse_args(argv)
    case = args.case
    routine = B.CASES[case][1]
    variants = VARIANTS[case]
    if args.variants:
        wanted = args.variants.split(",")
        variants = [v for v in variants if v.name in wanted]
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with tempfile.TemporaryDirectory(prefix="specql-bench-") as tmp:
        work = Path(tmp)
        entities = B.prepare_entities(args.batch_size, work)
        if args.show:
            from specql.generate import generate
            generate([str(entities)], work / "generated")
            base = routine_text(work / "generated" / "migrations", routine)
            v = next(v for v in VARIANTS[case] if v.name == args.show)
            print(variant_sql(base, routine, v, args.batch_size) or "n/a: an edit does not apply")
            return 0
        B.log("starting embedded PostgreSQL")
        with embedded_server() as server, throwaway_database(server, prefix="specql_bench") as url:
            migrations = B.generate_and_migrate(entities, work, url)
            base = routine_text(migrations, routine)
            names: dict[str, str] = {}
            with connect(url, autocommit=True) as admin:
                # The routines reference bench.bench_item: it must exist to CREATE them.
                B.fresh_table(admin, with_rows=False)
                for v in variants:
                    text = variant_sql(base, routine, v, args.batch_size)
                    if text is None:
                        B.log(f"variant {v.name}: n/a (an edit does not match the generated SQL, or it is "
                              "what is generated already)")
                        continue
                    admin.execute(text)
                    names[v.name] = routine if v.name == "generated" else f"{routine}__{v.name}"
                if args.before:
                    admin.execute(before_sql(Path(args.before), routine))
                    names["before"] = f"{routine}__before"
                print(f"case {case}, batch_size {args.batch_size}; {B.settings(admin)}")
                for v in variants:
                    if v.name in names:
                        print(f"  {v.name:<16} {v.what}")
                if args.before:
                    print(f"  {'before':<16} the routine of {args.before}")
                for n in sizes:
                    if case != "insert":
                        B.create_seed(admin, n, 1.0)
                    if case == "update_ids":
                        ids = [r[0] for r in admin.execute("SELECT id FROM bench.seed ORDER BY id")]
                        data = "{" + ",".join(map(str, ids)) + "}"
                    elif case == "insert":
                        data = B.insert_payloads(n)
                    else:
                        data = None
                    sides = ["plain", *names]
                    times: dict[str, list[B.Measurement]] = {s: [] for s in sides}
                    for r in range(args.repeat):
                        order = sides[r % len(sides):] + sides[:r % len(sides)]
                        fps = {}
                        for side in order:
                            B.fresh_table(admin, with_rows=(case != "insert"))
                            fn = (B.plain_fn(case, data) if side == "plain"
                                  else B.routine_fn(case, data, names[side]))
                            m = B._measure(url, admin, fn, sample_memory=(case == "insert"),
                                           quiet_wait=args.quiet_wait)
                            if m.rows != n:
                                raise SystemExit(f"FAIL: {side} changed {m.rows} rows, expected {n}")
                            fps[side] = m.fingerprint
                            times[side].append(m)
                            mem = f", peak anon {m.mem['peak_anon_mb']:.0f} MB" if m.mem else ""
                            srv = f", server {m.server_ms / 1000:.3f}s" if m.server_ms is not None else ""
                            B.log(f"  N={n:,} {side:<16} {m.seconds:.3f}s (backend CPU {m.backend_cpu:.2f}s){srv}{mem}"
                                  + (f", others {m.others_cpu:.2f} CPU" if m.others_cpu >= 0.1 else ""))
                        if len(set(fps.values())) != 1:
                            raise SystemExit(f"FAIL: tables differ: {fps}")
                    print(f"\nN={n:,}: median of {args.repeat}; ratio = median over repeats of plain time / "
                          "variant time (same repeat)")
                    print(f"  {'variant':<16} {'time s':>8} {'ratio':>6} {'cpu ratio':>9} {'server s':>9} "
                          f"{'peak anon MB':>13}  all runs")
                    for side in sides:
                        ms = times[side]
                        t = statistics.median(m.seconds for m in ms)
                        srv = (f"{statistics.median(m.server_ms for m in ms) / 1000:>9.3f}"
                               if ms[0].server_ms is not None else f"{'':>9}")
                        mem = f"{max(m.mem.get('peak_anon_mb', 0) for m in ms):>13.0f}" if ms[0].mem else f"{'':>13}"
                        ratio = statistics.median(p.seconds / m.seconds for p, m in zip(times["plain"], ms))
                        cpu = statistics.median(p.backend_cpu / max(m.backend_cpu, 0.01)
                                                for p, m in zip(times["plain"], ms))
                        print(f"  {side:<16} {t:>8.3f} {ratio:>6.2f} {cpu:>9.2f} {srv} {mem}  "
                              f"{[round(m.seconds, 2) for m in ms]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
