#!/usr/bin/env python
"""A large jsonb data_source from a file (issue 12 part 4, SPEC §11) against a plain COPY of
the same rows.

For each size N (default 100k and 1M records) it writes the rows of bench/csv_bench.py (id,
status, amount, category, updated_at, note; one note in ten holds a comma and quotes) three
ways: a CSV file, a JSON lines file and a JSON array file (one element a line, as
json.dump(indent=None) per element writes it). Then, on ONE embedded PostgreSQL, rotating
which goes first:

- plain:  `COPY bench.csv_item (...) FROM STDIN (FORMAT csv, HEADER)` of the CSV file, streamed
          in 1 MB chunks, into a fresh table (the fastest way to load these rows);
- lines:  what `specql run bench_import_json --json FILE.jsonl` does (specql.jsonimport.run_json):
          COPY the file's lines into the staging table, call the generated routine (batch_size
          1000, per_batch) with staging_id, print the summary, drop the staged rows;
- array:  the same with the JSON array file (the client finds each element with raw_decode).

Every side must leave the same table (row count and a hash of every column). It prints seconds
and records/second per side, each JSON side's ratio to plain, the growth t(1M)/t(100k) of each
side and its ratio to plain's, and the peak private memory (RssAnon) of the server's backends
and of this client. With --argument it also times the routine given the whole file as its jsonb
argument at the smallest size (the backend memory the staged path avoids).

    flock /tmp/bench.lock .venv/bin/python bench/json_bench.py
    flock /tmp/bench.lock .venv/bin/python bench/json_bench.py --sizes 100000 --repeat-small 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402

from csv_bench import (COLUMNS, GROWTH_LIMIT, TABLE, TARGET_RATIO, fresh_target,  # noqa: E402
                       log, measure, plain, write_csv)
from specql.database import embedded_server, throwaway_database  # noqa: E402
from specql.generate import generate, load_project  # noqa: E402
from specql.jsonimport import run_json  # noqa: E402
from specql.migrate import migrate  # noqa: E402
from specql.run import Bound, bind_params, execute, find_operation  # noqa: E402

ENTITY = """\
name: csv_item
schema: bench
fields:
  id: bigint
  status: string
  amount: decimal
  category: integer
  updated_at: timestamp
  note: string
patterns:
  - name: batch_operations
    operation: bench_import_json
    operation_type: insert
    data_source: :rows
    insert_data:
      id: :r.id
      status: :r.status
      amount: :r.amount
      category: :r.category
      updated_at: :r.updated_at
      note: :r.note
    batch_size: 1000
    progress_tracking: false
"""
SIDES = ("plain", "lines", "array")


def write_json(csv_path: Path, lines_path: Path, array_path: Path) -> None:
    """The CSV file's rows as JSON lines and as a JSON array (one element a line)."""
    import csv
    with open(csv_path, newline="", encoding="utf-8") as src, open(lines_path, "w", encoding="utf-8") as jl, \
            open(array_path, "w", encoding="utf-8") as ja:
        reader = csv.reader(src)
        next(reader)
        ja.write("[")
        for i, row in enumerate(reader):
            rec = dict(zip(COLUMNS, row))
            rec["id"], rec["category"] = int(rec["id"]), int(rec["category"])
            text = json.dumps(rec, ensure_ascii=False)
            jl.write(text + "\n")
            ja.write(("\n" if i == 0 else ",\n") + text)
        ja.write("\n]\n")


def staged(url: str, op, path: Path) -> int:
    result = run_json(url, op, str(path), [], confirm=False, batch_size=None, resume=None, rejects=None,
                      execute=execute, bind_params=bind_params, echo=lambda m: None)
    if result["status"] != "completed":
        raise SystemExit(f"routine ended {result['status']}: {result}")
    return result["processed_records"]


def argument(url: str, op, path: Path) -> int:
    bound = [Bound("rows", "jsonb", path.read_text("utf-8"))]
    result = execute(url, op, bound)
    return result["processed_records"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per side at the largest size")
    ap.add_argument("--repeat-small", type=int, default=3)
    ap.add_argument("--argument", action="store_true", help="also time the jsonb argument at the smallest size")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="specql-jsonbench-") as tmp:
        work = Path(tmp)
        (work / "entities").mkdir()
        (work / "entities" / "csv_item.yaml").write_text(ENTITY, "utf-8")
        generate([str(work / "entities")], work / "generated")
        op = find_operation(load_project([str(work / "entities")]), "bench_import_json")
        with embedded_server() as server, throwaway_database(server, "jsonbench") as url:
            dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
            migrate(str(work / "generated"), url, echo=lambda *a, **k: None)
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false)")
                log(c.execute("SELECT version()").fetchone()[0])
            results = {}
            for n in sizes:
                csv_path, jl, ja = work / f"items_{n}.csv", work / f"items_{n}.jsonl", work / f"items_{n}.json"
                write_csv(csv_path, n)
                write_json(csv_path, jl, ja)
                log(f"{n:,} records: CSV {csv_path.stat().st_size / 1e6:.1f} MB, JSON lines "
                    f"{jl.stat().st_size / 1e6:.1f} MB, JSON array {ja.stat().st_size / 1e6:.1f} MB")
                fns = {"plain": lambda: plain(url, csv_path), "lines": lambda: staged(url, op, jl),
                       "array": lambda: staged(url, op, ja)}
                if args.argument and n == min(sizes):
                    fns["argument"] = lambda: argument(url, op, ja)
                repeats = args.repeat if n == max(sizes) else args.repeat_small
                sides = {side: [] for side in fns}
                for r in range(repeats):
                    order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
                    for side in order:
                        m = measure(url, dbname, fns[side])
                        if m["rows"] != n:
                            raise SystemExit(f"{side} imported {m['rows']} rows, not {n}")
                        sides[side].append(m)
                        log(f"  {side:8} {m['seconds']:.2f} s, backend peak {m['backend_mb']:.0f} MB, "
                            f"client peak {m['client_mb']:.0f} MB")
                    prints = {side: ms[-1]["fingerprint"] for side, ms in sides.items()}
                    if len(set(prints.values())) != 1:
                        raise SystemExit(f"the sides left different tables: {prints}")
                for p in (csv_path, jl, ja):
                    p.unlink()
                results[n] = sides
            fresh_target(url)
    ok = True
    print("\njsonb source from a file (specql run --json) vs plain COPY (batch_size 1000, per_batch, one embedded server)")
    print(f"{'rows':>10} {'side':>8} {'s':>7} {'rec/s':>10} {'ratio':>6} {'(range)':>13} {'backend MB':>11} {'client MB':>10}")
    for n, sides in results.items():
        tp = statistics.median(m["seconds"] for m in sides["plain"])
        for side, ms in sides.items():
            t = statistics.median(m["seconds"] for m in ms)
            ratios = [p["seconds"] / m["seconds"] for p, m in zip(sides["plain"], ms)]
            ratio = statistics.median(ratios)
            backend = max(m["backend_mb"] for m in ms)
            client = max(m["client_mb"] for m in ms)
            print(f"{n:>10,} {side:>8} {t:>7.2f} {n / t:>10,.0f} {ratio:>6.2f} "
                  f"{min(ratios):>6.2f}-{max(ratios):<6.2f} {backend:>11.0f} {client:>10.0f}")
            if n == max(sizes) and side in ("lines", "array"):
                ok &= ratio >= TARGET_RATIO and backend < 256
    if len(results) > 1:
        small, large = min(results), max(results)
        grow = {side: statistics.median(m["seconds"] for m in results[large][side])
                / statistics.median(m["seconds"] for m in results[small][side]) for side in SIDES}
        for side in ("lines", "array"):
            g = grow[side] / grow["plain"]
            print(f"growth {small:,} -> {large:,}: COPY {grow['plain']:.2f} x, {side} {grow[side]:.2f} x, "
                  f"ratio {g:.2f} (target <= {GROWTH_LIMIT})")
            ok &= g <= GROWTH_LIMIT
    print("PASS" if ok else "FAIL", f"(targets: ratio >= {TARGET_RATIO}, backend peak < 256 MB, growth ratio "
                                    f"<= {GROWTH_LIMIT})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
