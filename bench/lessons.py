"""Issue 14's benchmark: what audit and hooks cost an update, and how fast seed 002's soft delete,
restore and purge run (bench/README.md, section "Issue 14").

    flock /tmp/bench.lock .venv/bin/python bench/lessons.py [--rows 1000000] [--repeat 3] [--database-url URL]

One server (embedded PostgreSQL 18 unless --database-url / --pg-bin), bench/lessons/ generated
and applied. Update: the same id-array update (1M ids in random order, batch_size 1000, no log
rows) as bump_plain, bump_audited (audit: true) and bump_hooked (an empty after hook), in turn,
each on a table of the same state (VACUUMed between runs, the audit table truncated); the
ratio is plain time / other time per repeat, the median reported. Soft delete: a 5,000-row table
(the seed's flow) and 5,000 rows of a --rows table; soft delete all 5,000 by id (batch 500),
restore them (batch 500), soft delete again and purge (batch 100): records per second.
Targets: audit >= 0.5 x plain, empty after hook >= 0.8 x plain, each soft-delete operation
>= 15 x 10,000 records/s = 150,000 records/s. Exit 1 when one fails.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specql import database  # noqa: E402
from specql.generate import generate  # noqa: E402
from specql.migrate import migrate  # noqa: E402

HOOK = """CREATE OR REPLACE FUNCTION bench14.noop_hook(operation_id uuid, batch_number integer, old_rows jsonb,
    new_rows jsonb, changed_fields text[]) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$"""


def backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the server backend `pid` has used, or None when the server is
    not on this machine. On a shared machine wall times vary with the load; the backend's own
    CPU time much less, so the ratios are printed both ways (bench/README.md, issue 14)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(url: str, sql: str, params: tuple = (), cpu: dict | None = None) -> tuple[float, dict]:
    """Wall seconds of one statement on a connection of its own and its row; with `cpu`, the
    backend's CPU seconds in cpu["s"] (None when unknown)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        before = backend_cpu(conn.info.backend_pid)
        started = time.perf_counter()
        row = cur.execute(sql, params).fetchone()
        wall = time.perf_counter() - started
        after = backend_cpu(conn.info.backend_pid)
        if cpu is not None:
            cpu["s"] = None if before is None or after is None else after - before
        return wall, row


def bench_updates(url: str, rows: int, repeat: int) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench14.item")
        conn.execute("INSERT INTO bench14.item (id, status, n, updated_at) "
                     "SELECT g, 'active', 0, now() FROM generate_series(1, %s) AS g", (rows,))
        conn.execute("ALTER TABLE bench14.item SET (autovacuum_enabled = off)")
        conn.execute("VACUUM (ANALYZE) bench14.item")
    ids = list(range(1, rows + 1))
    random.Random(14).shuffle(ids)
    ids_text = "{" + ",".join(map(str, ids)) + "}"
    times: dict[str, list[float]] = {"bump_plain": [], "bump_audited": [], "bump_hooked": []}
    ratios: dict[str, list[float]] = {"bump_audited": [], "bump_hooked": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in ratios}
    # Warm-up, untimed: the freshly loaded table has full pages, so the first update of every
    # row moves it to a new page; every later run meets the table a run and a VACUUM leave
    # (free space in each page). Without this the first timed run, repeat 1's plain one, was
    # 20-45 % slower than the others and flattered repeat 1's ratios (bench/README.md).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM bench14.bump_plain(ids => %s::bigint[])", (ids_text,))
    for r in range(repeat):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        this: dict[str, float] = {}
        this_cpu: dict[str, float | None] = {}
        for name in order:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE specql.batch_operation_audit")
                conn.execute("VACUUM bench14.item")
                conn.execute("CHECKPOINT")
            cpu: dict = {}
            t, row = timed(url, f"SELECT * FROM bench14.{name}(ids => %s::bigint[])", (ids_text,), cpu)
            assert row["status"] == "completed" and row["processed_records"] == rows, row
            if name == "bump_audited":
                with psycopg.connect(url) as conn:
                    audited = conn.execute("SELECT count(*) FROM specql.batch_operation_audit").fetchone()[0]
                assert audited == rows, audited
            times[name].append(t)
            this[name] = t
            this_cpu[name] = cpu["s"]
            shown = "" if cpu["s"] is None else f"  backend CPU {cpu['s']:7.2f} s"
            print(f"  repeat {r + 1} {name:<13} {t:7.2f} s  {rows / t:>10,.0f} rec/s{shown}", flush=True)
        for name in ratios:
            ratios[name].append(this["bump_plain"] / this[name])
            if this_cpu[name] and this_cpu["bump_plain"]:
                cpu_ratios[name].append(this_cpu["bump_plain"] / this_cpu[name])
    out = {}
    for name in ratios:
        out[name] = statistics.median(ratios[name])
        print(f"{name}: {out[name]:.2f} x bump_plain (per-repeat ratios "
              f"{', '.join(f'{x:.2f}' for x in ratios[name])}; median times plain "
              f"{statistics.median(times['bump_plain']):.2f} s, {name} {statistics.median(times[name]):.2f} s)")
        if cpu_ratios[name]:
            print(f"{name}: backend CPU ratio {statistics.median(cpu_ratios[name]):.2f} x bump_plain "
                  f"(per repeat {', '.join(f'{x:.2f}' for x in cpu_ratios[name])})")
    return out


def bench_soft_delete(url: str, table_rows: int, repeat: int) -> dict[str, float]:
    n = 5000
    ids_text = "{" + ",".join(map(str, range(1, n + 1))) + "}"
    best: dict[str, list[float]] = {"soft_delete": [], "restore": [], "purge": []}
    for _ in range(repeat):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE bench14.person")
            conn.execute("INSERT INTO bench14.person (id, name, email) SELECT g, 'User ' || g, "
                         "'user' || g || '@test.com' FROM generate_series(1, %s) AS g", (table_rows,))
            conn.execute("VACUUM (ANALYZE) bench14.person")
        steps = [("soft_delete", "SELECT * FROM bench14.person_soft_delete(ids => %s::bigint[])", (ids_text,)),
                 ("restore", "SELECT * FROM bench14.person_restore(ids => %s::bigint[])", (ids_text,)),
                 (None, "SELECT * FROM bench14.person_soft_delete(ids => %s::bigint[])", (ids_text,)),
                 ("purge", "SELECT * FROM bench14.person_purge(cutoff => clock_timestamp())", ())]
        for name, sql, params in steps:
            t, row = timed(url, sql, params)
            assert row["status"] == "completed" and row["processed_records"] == n, (name, row)
            if name:
                best[name].append(t)
    out = {}
    for name, ts in best.items():
        t = statistics.median(ts)
        out[name] = n / t
        print(f"  {name:<12} 5,000 of {table_rows:>9,} rows: {t * 1000:7.1f} ms  {n / t:>10,.0f} rec/s "
              f"({n / t / 10000:.1f} x 10,000 rec/s)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--pg-bin", help="PostgreSQL binaries to start a throwaway cluster from (e.g. 15)")
    args = ap.parse_args()
    with ExitStack() as stack:
        if args.database_url:
            server = args.database_url
        elif args.pg_bin:
            server = stack.enter_context(database.local_server(Path(args.pg_bin)))
        else:
            server = stack.enter_context(database.embedded_server())
        url = stack.enter_context(database.throwaway_database(server, prefix="bench14"))
        with psycopg.connect(url, autocommit=True) as conn:
            print(conn.execute("SELECT version()").fetchone()[0])
        out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        generate([str(ROOT / "bench" / "lessons")], out)
        assert migrate(out, url, echo=lambda _: None) == 0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(HOOK)
        print(f"update of {args.rows:,} rows by id array, batch_size 1000:")
        ratios = bench_updates(url, args.rows, args.repeat)
        rates = {}
        for table_rows in (5000, args.rows):
            print(f"soft delete / restore / purge of 5,000 rows in a {table_rows:,}-row table:")
            rates[table_rows] = bench_soft_delete(url, table_rows, max(args.repeat, 3))
    verdicts = [("audit >= 0.5 x plain", ratios["bump_audited"] >= 0.5),
                ("empty after hook >= 0.8 x plain", ratios["bump_hooked"] >= 0.8)]
    verdicts += [(f"{name} ({rows:,}-row table) >= 150,000 rec/s", rate >= 150_000)
                 for rows, r in rates.items() for name, rate in r.items()]
    for what, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
