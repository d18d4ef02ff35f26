#!/usr/bin/env python
"""What a batch run costs the other sessions that read the table (issue 15): a full scan's time
while the run's transaction is still open, and after it committed, for one plain UPDATE and for
the generated routine under each `transaction` mode.

    /work/venv/bin/python bench/readers.py                 # 1M rows, bigint key, 3 repeats
    /work/venv/bin/python bench/readers.py --rows 100000 --key uuid

Why it differs: a per_batch function runs each batch in a savepoint, and a savepoint that writes
gets a subtransaction id. After 64 of them the backend's cache of its subtransaction ids
overflows, and from then until the run's transaction ends every snapshot another session takes
is "suboverflowed": a reader meeting a row version the run wrote must look its transaction up
in pg_subtrans (an SLRU of 32 buffers by default) instead of the snapshot's array. After the
commit, the first reader sets the hint bits of every row version the run wrote (any writer
pays that, plain UPDATE too), and looks each subtransaction's status up in pg_xact once per
change of id. A commit_per_batch procedure has no savepoints (each batch is a top-level
transaction), `transaction: single` none either.

One embedded PostgreSQL 18, a fresh table per measurement (same rows, VACUUM ANALYZE,
CHECKPOINT, warm cache), the reader on its own connection: `SELECT count(*) FROM t WHERE
amount >= 0` (every row checked for visibility), timed `--repeat` times; the figure is the
median, and the ratio is against the same reader after (or during) one plain UPDATE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from specql.database import connect, embedded_server, throwaway_database  # noqa: E402
from specql.generate import generate  # noqa: E402
from specql.migrate import migrate  # noqa: E402

KEYS = {"bigint": ("bigint", "g::bigint"), "uuid": ("uuid", "md5(g::text)::uuid"), "text": ("string", "md5(g::text)")}

ENTITY = """
name: item
schema: rd
fields:
  id: {key}
  status: string
  amount: decimal
  payload: jsonb
patterns:
{ops}
"""
OP = """
  - name: batch_operations
    operation: touch_{mode}
    operation_type: update
    update_data: {{status: ":to_status"}}
    where_condition: "status = :from_status"
    batch_size: {batch}
    transaction: {mode}
    progress_tracking: false
"""
MODES = ("per_batch", "commit_per_batch", "single")
READ = "SELECT count(*) FROM rd.item WHERE amount >= 0"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fresh(conn, rows: int, seed_expr: str) -> None:
    conn.execute("DROP TABLE IF EXISTS rd.item")
    conn.execute("CREATE TABLE rd.item (LIKE rd.item_template INCLUDING ALL) WITH (autovacuum_enabled = false)")
    conn.execute(f"INSERT INTO rd.item SELECT {seed_expr}, 'pending', (g %% 1000) / 10.0, "
                 "jsonb_build_object('n', g) FROM generate_series(1, %s) AS g", (rows,))
    conn.execute("VACUUM (ANALYZE) rd.item")
    conn.execute("CHECKPOINT")
    conn.execute(READ)  # warm, hint bits set


def timed_reads(url: str, repeat: int) -> list[float]:
    out = []
    with connect(url, autocommit=True) as reader:
        reader.execute("SET max_parallel_workers_per_gather = 0")  # one backend's work, comparable
        for _ in range(repeat):
            t0 = time.perf_counter()
            reader.execute(READ).fetchone()
            out.append(time.perf_counter() - t0)
    return out


def writer_sql(mode: str) -> str:
    if mode == "plain":
        return "UPDATE rd.item SET status = 'done' WHERE status = 'pending'"
    if mode == "commit_per_batch":
        return "CALL rd.touch_commit_per_batch(from_status => 'pending', to_status => 'done', result => NULL)"
    return f"SELECT status FROM rd.touch_{mode}(from_status => 'pending', to_status => 'done')"


def measure(url: str, admin, mode: str, rows: int, seed_expr: str, repeat: int) -> dict:
    fresh(admin, rows, seed_expr)
    res = {}
    with connect(url, autocommit=True) as writer:
        if mode == "commit_per_batch":  # commits itself: no open transaction to read during
            t0 = time.perf_counter()
            writer.execute(writer_sql(mode))
            res["write"] = time.perf_counter() - t0
        else:
            writer.execute("BEGIN")
            t0 = time.perf_counter()
            writer.execute(writer_sql(mode))
            res["write"] = time.perf_counter() - t0
            res["during"] = timed_reads(url, repeat)
            writer.execute("COMMIT")
    res["first_after"] = timed_reads(url, 1)[0]  # sets the hint bits
    res["after"] = timed_reads(url, repeat)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--key", choices=list(KEYS), default="bigint")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    field, seed_expr = KEYS[args.key]
    ops = "".join(OP.format(mode=m, batch=args.batch_size) for m in MODES)
    with tempfile.TemporaryDirectory(prefix="specql-readers-") as tmp:
        ent = Path(tmp, "e")
        ent.mkdir()
        (ent / "item.yaml").write_text(ENTITY.format(key=field, ops=ops))
        generate([str(ent)], Path(tmp, "out"))
        with embedded_server() as server, throwaway_database(server, prefix="specql_readers") as url:
            lines: list[str] = []
            if migrate(Path(tmp, "out", "migrations"), url, echo=lines.append) != 0:
                raise SystemExit("\n".join(lines))
            with connect(url, autocommit=True) as admin:
                admin.execute("ALTER TABLE rd.item RENAME TO item_template")
                version = admin.execute("SHOW server_version").fetchone()[0]
                results = {}
                for mode in ("plain",) + MODES:
                    log(f"{mode}: {args.rows:,} rows, {args.key} key")
                    results[mode] = measure(url, admin, mode, args.rows, seed_expr, args.repeat)
                    r = results[mode]
                    log(f"  write {r['write']:.2f}s; reads during {r.get('during')}; first after "
                        f"{r['first_after']:.3f}s; after {r['after']}")
    base = results["plain"]
    print(f"PostgreSQL {version}; {args.rows:,} rows, {args.key} key, batch_size {args.batch_size}; "
          f"reader: {READ} (no parallel workers), median of {args.repeat}")
    print(f"{'writer':<22} {'write s':>8} {'read during s':>14} {'x plain':>8} {'1st read after s':>17} "
          f"{'x plain':>8} {'read after s':>13} {'x plain':>8}")
    for mode, r in results.items():
        during = statistics.median(r["during"]) if "during" in r else None
        bd = statistics.median(base["during"])
        after, ba = statistics.median(r["after"]), statistics.median(base["after"])
        d = f"{during:>14.3f} {during / bd:>8.2f}" if during is not None else f"{'(commits each)':>14} {'':>8}"
        label = "plain UPDATE" if mode == "plain" else f"routine {mode}"
        print(f"{label:<22} {r['write']:>8.2f} {d} {r['first_after']:>17.3f} "
              f"{r['first_after'] / base['first_after']:>8.2f} {after:>13.3f} {after / ba:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
