#!/usr/bin/env python
"""Benchmark parallel workers (issue 13): one run of a `parallel: true` operation with 1, 2 and 4
workers, against one plain UPDATE, on one embedded PostgreSQL.

    flock /tmp/bench.lock /work/main/.venv/bin/python bench/parallel.py
    flock /tmp/bench.lock /work/main/.venv/bin/python bench/parallel.py --rows 100000 --repeat 1

Cases (batch_size 1000, worker_batch_size 10000 = the default of 10 batches a chunk):
- update: `bench_par_update_by_status` (status = :from_status, a keyset walk in each chunk) vs one
  plain `UPDATE ... WHERE status = $1`, on a fresh copy of the same table each time;
- insert: `bench_par_insert_rows` from a jsonb array of the rows (data_source), into an empty table;
- staged: `bench_par_import_csv` (bench/csv_bench.py's CSV entity with `parallel: true`): the
  CSV file staged once with COPY (specql.csvimport.stage_file, as `specql run --csv` does), then
  each timing `<op>_start(staging_id => ...)` and the workers into an emptied target: the issue's
  "import from staging";
- hand (with update): the issue's reference, hand-written sessions on disjoint halves of the key
  range (key ranges of 1000, COMMIT every 10), timed among the update sides: how far 2 sessions
  scale on the machine at that moment, without any of the workers' bookkeeping.

A timing is one run: `<op>_start(...)` (the split into chunks included) and N sessions each
`CALL <op>_worker(...)` until the last returns. Both sides must change the same rows
(bench/run.py's table fingerprint). Targets: update with 2 workers >= 1.7 x 1 worker and >= 0.95 x
the plain UPDATE; an import from staging (staged) with 2 workers >= 1.5 x 1 worker. Medians of --repeat timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  bench/run.py: seed, fresh tables, fingerprints, payloads
from specql.database import connect, embedded_server, throwaway_database  # noqa: E402

PARALLEL_OPS = """
  - name: batch_operations
    description: "Condition-driven update, parallel workers"
    operation: bench_par_update_by_status
    operation_type: update
    update_data:
      status: :to_status
      updated_at: "CURRENT_TIMESTAMP"
    where_condition: "status = :from_status"
    batch_size: 1000
    parallel: true
    error_handling: stop_on_error
    progress_tracking: false

  - name: batch_operations
    description: "jsonb array insert, parallel workers"
    operation: bench_par_insert_rows
    operation_type: insert
    data_source: :rows
    insert_data:
      id: :row.id
      status: :row.status
      amount: :row.amount
      category: :row.category
      updated_at: :row.updated_at
      payload: :row.payload
    batch_size: 1000
    parallel: true
    error_handling: stop_on_error
    progress_tracking: false
"""


def prepare(workdir: Path) -> Path:
    """bench/entities with the two parallel operations appended."""
    entities = bench.prepare_entities(1000, workdir)
    path = entities / "bench_item.yaml"
    path.write_text(path.read_text("utf-8") + PARALLEL_OPS, "utf-8")
    return entities


def parallel_run(url: str, op: str, args: dict, workers: int, table: str = "bench.bench_item") -> tuple[float, float, tuple]:
    """Seconds for <op>_start(args) + `workers` sessions running <op>_worker to the end, the seconds
    of <op>_start alone, and the run row."""
    conns = [connect(url, autocommit=True) for _ in range(workers + 1)]
    try:
        for c in conns:
            c.pgconn.nonblocking = 0  # blocking libpq: see bench/run.py (a big jsonb parameter)
            c.execute(f"SELECT 1 FROM {table} LIMIT 1")
        names = ", ".join(f"{k} => %s" for k in args)
        errors: list = []

        def work(c, op_id):
            try:
                c.execute(f"CALL bench.{op}_worker(operation_id => %s)", (op_id,))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t0 = time.perf_counter()
        op_id = conns[0].execute(f"SELECT bench.{op}_start({names})", list(args.values())).fetchone()[0]
        started = time.perf_counter() - t0
        threads = [threading.Thread(target=work, args=(c, op_id)) for c in conns[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise SystemExit(f"{op}: a worker failed: {errors[0]}")
        row = conns[0].execute("SELECT status, processed_records, failed_records, batch_count FROM "
                               "specql.batch_operation_runs WHERE operation_id = %s", (op_id,)).fetchone()
        if row[0] != "completed" or row[2]:
            raise SystemExit(f"{op}: run ended {row}")
        bench.log(f"    {op}_start took {started:.2f}s of {seconds:.2f}s")
        return seconds, started, row
    finally:
        for c in conns:
            c.close()


def plain_update(url: str) -> tuple[float, int]:
    with connect(url, autocommit=True) as c:
        c.execute("SELECT 1 FROM bench.bench_item LIMIT 1")
        t0 = time.perf_counter()
        n = c.execute(f"UPDATE {bench.TABLE} SET status = %s, updated_at = CURRENT_TIMESTAMP WHERE status = %s",
                      (bench.TO_STATUS, bench.FROM_STATUS)).rowcount
        return time.perf_counter() - t0, n


HAND = f"""
CREATE OR REPLACE PROCEDURE bench.hand_update(lo bigint, hi bigint) LANGUAGE plpgsql AS $$
DECLARE
    k bigint := lo;
    i integer := 0;
BEGIN
    WHILE k < hi LOOP
        UPDATE {bench.TABLE} SET status = '{bench.TO_STATUS}', updated_at = CURRENT_TIMESTAMP
        WHERE id > k AND id <= least(k + 1000, hi) AND status = '{bench.FROM_STATUS}';
        k := k + 1000;
        i := i + 1;
        IF i % 10 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$"""


def hand_update(url: str, rows: int, sessions: int) -> float:
    """The issue's reference: hand-written sessions on disjoint key ranges of the bigint key,
    each updating key ranges of 1000 with the condition re-checked and committing every 10
    batches (a chunk's worth), none of the workers' bookkeeping. Seconds until the last ends."""
    cuts = [rows * i // sessions for i in range(sessions + 1)]
    conns = [connect(url, autocommit=True) for _ in range(sessions)]
    try:
        threads = [threading.Thread(target=c.execute, args=("CALL bench.hand_update(%s, %s)", (cuts[i], cuts[i + 1])))
                   for i, c in enumerate(conns)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()


def staged_import(server: str, opts, counts: list[int], times: dict) -> None:
    """The staged case: one CSV file staged once, imported by 1, 2, 4 workers in turn."""
    import csv_bench
    from specql.csvimport import stage_file
    from specql.generate import generate, load_project
    from specql.migrate import migrate
    from specql.run import find_operation

    with tempfile.TemporaryDirectory() as tmp, throwaway_database(server) as url:
        work = Path(tmp)
        (work / "entities").mkdir()
        entity = csv_bench.ENTITY.replace("operation: bench_import_csv", "operation: bench_par_import_csv")
        (work / "entities" / "csv_item.yaml").write_text(entity + "    parallel: true\n", "utf-8")
        generate([str(work / "entities")], work / "generated")
        assert migrate(str(work / "generated"), url, echo=lambda *a, **k: None) == 0
        op = find_operation(load_project([str(work / "entities")]), "bench_par_import_csv")
        path = work / "items.csv"
        csv_bench.write_csv(path, opts.rows)
        with connect(url, autocommit=True) as c:
            c.execute(f"ALTER TABLE {csv_bench.TABLE} SET (autovacuum_enabled = false)")
            staged = stage_file(c, op, path)
        bench.log(f"staged {staged.records} CSV records")
        expected = None
        for r in range(opts.repeat):
            for w in (counts if r % 2 == 0 else counts[::-1]):
                csv_bench.fresh_target(url)
                bench.wait_quiet(opts.quiet_wait)
                seconds, started, row = parallel_run(url, "bench_par_import_csv",
                                                     {"staging_id": staged.staging_id}, w, csv_bench.TABLE)
                fp = csv_bench.fingerprint(url)
                if row[1] != opts.rows or (expected is not None and fp != expected):
                    raise SystemExit(f"staged x{w}: {row}, table {fp} (expected {expected})")
                expected = fp
                times.setdefault(("staged", w), []).append(seconds)
                times.setdefault(("staged workers", w), []).append(seconds - started)
                bench.log(f"  repeat {r + 1}: staged import {w} workers {seconds:.2f}s "
                          f"({opts.rows / seconds:,.0f} rec/s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="update,insert,staged")
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    opts = ap.parse_args(argv)
    counts = [int(w) for w in opts.workers.split(",")]
    cases = opts.cases.split(",")
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, embedded_server() as server, throwaway_database(server) as url:
        workdir = Path(tmp)
        bench.generate_and_migrate(prepare(workdir), workdir, url)
        with connect(url, autocommit=True) as admin:
            bench.log(bench.settings(admin) + f"; source {bench.source_version()}")
            bench.log(f"{opts.rows} rows; seeding")
            bench.create_seed(admin, opts.rows, 1.0)
            payload = bench.insert_payloads(opts.rows)[1] if "insert" in cases else None
            if "hand" in cases:
                admin.execute(HAND)
            for r in range(opts.repeat):
                if "update" in cases:
                    expected = None
                    # Alternate the order of the sides between repeats.
                    sides = ([("plain", 0)] + [("update", w) for w in counts]
                             + [("hand", w) for w in counts if "hand" in cases])
                    for side, w in (sides if r % 2 == 0 else sides[::-1]):
                        bench.fresh_table(admin, with_rows=True)
                        bench.wait_quiet(opts.quiet_wait)
                        if side == "plain":
                            seconds, n = plain_update(url)
                        elif side == "hand":
                            seconds = hand_update(url, opts.rows, w)
                            n = admin.execute(f"SELECT count(*) FROM {bench.TABLE} WHERE status = %s",
                                              (bench.TO_STATUS,)).fetchone()[0]
                        else:
                            seconds, started, row = parallel_run(url, "bench_par_update_by_status",
                                                                 {"from_status": bench.FROM_STATUS,
                                                                  "to_status": bench.TO_STATUS}, w)
                            n = row[1]
                            times.setdefault(("update workers", w), []).append(seconds - started)
                        fp = bench.table_fingerprint(admin)
                        if n != opts.rows or (expected is not None and fp != expected):
                            raise SystemExit(f"{side} x{w}: {n} rows, table {fp} (expected {expected})")
                        expected = fp
                        times.setdefault((side, w), []).append(seconds)
                        bench.log(f"  repeat {r + 1}: {side} {'' if side == 'plain' else f'{w} workers '}"
                                  f"{seconds:.2f}s ({n / seconds:,.0f} rec/s)")
                if "insert" in cases:
                    for w in (counts if r % 2 == 0 else counts[::-1]):
                        bench.fresh_table(admin, with_rows=False)
                        bench.wait_quiet(opts.quiet_wait)
                        seconds, started, row = parallel_run(url, "bench_par_insert_rows", {"rows": payload}, w)
                        times.setdefault(("insert workers", w), []).append(seconds - started)
                        if row[1] != opts.rows:
                            raise SystemExit(f"insert x{w}: {row}")
                        times.setdefault(("insert", w), []).append(seconds)
                        bench.log(f"  repeat {r + 1}: insert {w} workers {seconds:.2f}s "
                                  f"({opts.rows / seconds:,.0f} rec/s)")
        if "staged" in cases:
            staged_import(server, opts, counts, times)
    ok = True
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{opts.rows:,} rows, batch_size 1000, worker_batch_size 10000, medians of {opts.repeat}")
    print("(`... workers`: the workers' phase alone, after <op>_start returned)")
    print(f"{'case':<15} {'workers':>7} {'seconds':>8} {'rec/s':>11} {'vs 1 worker':>12} {'vs plain':>9}")
    if "update" in cases:
        plain = med[("plain", 0)]
        print(f"{'update':<15} {'plain':>7} {plain:8.2f} {opts.rows / plain:11,.0f} {'':>12} {1:9.2f}")
    for case in ("update", "insert", "staged", "update workers", "insert workers", "staged workers", "hand"):
        if case.split()[0] not in cases:
            continue
        one = med.get((case, 1))
        for w in counts:
            t = med[(case, w)]
            vs_one = one / t if one else float("nan")
            vs_plain = med[("plain", 0)] / t if case in ("update", "hand") else float("nan")
            print(f"{case:<15} {w:>7} {t:8.2f} {opts.rows / t:11,.0f} {vs_one:12.2f} {vs_plain:9.2f}")
    if "update" in cases and (1 in counts and 2 in counts):
        s, p = med[("update", 1)] / med[("update", 2)], med[("plain", 0)] / med[("update", 2)]
        ok &= s >= 1.7 and p >= 0.95
        print(f"update: 2 workers = {s:.2f} x 1 worker (target 1.7), {p:.2f} x plain UPDATE (target 0.95): "
              f"{'PASS' if s >= 1.7 and p >= 0.95 else 'FAIL'}")
    if "hand" in cases and (1 in counts and 2 in counts):
        print(f"hand-written sessions: 2 = {med[('hand', 1)] / med[('hand', 2)]:.2f} x 1 (the same machine state: "
              f"what 2 workers could reach)")
    if "insert" in cases and (1 in counts and 2 in counts):
        s = med[("insert", 1)] / med[("insert", 2)]
        ok &= s >= 1.5
        print(f"insert: 2 workers = {s:.2f} x 1 worker (target 1.5): {'PASS' if s >= 1.5 else 'FAIL'}")
    if "staged" in cases and (1 in counts and 2 in counts):
        s = med[("staged", 1)] / med[("staged", 2)]
        ok &= s >= 1.5
        print(f"import from staging: 2 workers = {s:.2f} x 1 worker (target 1.5): {'PASS' if s >= 1.5 else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
