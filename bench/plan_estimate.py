#!/usr/bin/env python
"""How close `specql plan`'s estimate comes to the real run (issue 15: within 30% at 1M rows).

For each case: a fresh database on one embedded PostgreSQL 18, the entity's migrations, N rows
(VACUUM ANALYZE, CHECKPOINT), then `specql plan` (specql.explain.plan_operation: plans, a
rolled-back sample of 50 batches timed twice, the estimate), then the routine itself, timed from
the client, with its time per batch from its log rows (the mean gap between batch ends) beside
the sample's.

    /work/venv/bin/python bench/plan_estimate.py              # 1M rows, every case
    /work/venv/bin/python bench/plan_estimate.py --rows 100000 --cases reprice

Cases: the examples' `bulk_update_user_status` (entities/user.yaml: an id array of N uuids,
batch_size 100, continue_on_error, a log row per batch), `reprice_category`
(entities/product.yaml: commit_per_batch, batch_size 500, uuid key: the keyset walk), and the
bench's condition update on a uuid key (bench/entities, id rewritten to uuid: the heap walk).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from specql.database import connect, embedded_server, throwaway_database  # noqa: E402
from specql.explain import plan_operation, render_text  # noqa: E402
from specql.generate import generate, load_project  # noqa: E402
from specql.migrate import migrate  # noqa: E402
from specql.run import bind_params, call_sql, find_operation  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def user_case(conn, n: int):
    conn.execute('INSERT INTO public."user" (id, email, status) SELECT md5(g::text)::uuid, '
                 "'u' || g || '@x.org', 'active' FROM generate_series(1, %s) g", (n,))
    ids = [r[0] for r in conn.execute('SELECT id::text FROM public."user" ORDER BY id')]
    return "bulk_update_user_status", [f"user_ids={','.join(ids)}", "new_status=gone"]


def product_case(conn, n: int):
    conn.execute("INSERT INTO public.product (id, name, price, category_id) SELECT md5(g::text)::uuid, "
                 "'p' || g, 1, 7 FROM generate_series(1, %s) g", (n,))
    return "reprice_category", ["category_id=7", "new_price=2.5"]


def bench_uuid_case(conn, n: int):
    conn.execute("INSERT INTO bench.bench_item SELECT md5(g::text)::uuid, 'pending', 1, g %% 50, now(), "
                 "jsonb_build_object('n', g) FROM generate_series(1, %s) g", (n,))
    return "bench_update_by_status", ["from_status=pending", "to_status=done"]


CASES = {
    "user_ids": ("entities/user.yaml", user_case, '"user"'),
    "reprice": ("entities/product.yaml", product_case, "product"),
    "bench_uuid": (None, bench_uuid_case, "bench_item"),
}


def entity_files(case: str, tmp: Path) -> Path:
    source, _, _ = CASES[case]
    folder = tmp / case
    folder.mkdir()
    if source:
        (folder / Path(source).name).write_text((ROOT / source).read_text())
    else:
        text = (HERE / "entities" / "bench_item.yaml").read_text()
        (folder / "bench_item.yaml").write_text(re.sub(r"(?m)^(  id:\s*)bigint\s*$", r"\1uuid", text))
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="specql-plan-") as tmp, embedded_server() as server:
        for case in args.cases.split(","):
            folder = entity_files(case, Path(tmp))
            out = Path(tmp, case + "_out")
            generate([str(folder)], out)
            with throwaway_database(server, prefix="specql_plan") as url:
                lines: list[str] = []
                if migrate(out / "migrations", url, echo=lines.append) != 0:
                    raise SystemExit("\n".join(lines))
                with connect(url, autocommit=True) as conn:
                    name, params = CASES[case][1](conn, args.rows)
                    table = CASES[case][2]
                    conn.execute(f"VACUUM (ANALYZE) {'bench.' if case == 'bench_uuid' else 'public.'}{table}")
                    conn.execute("CHECKPOINT")
                op = find_operation(load_project([str(folder)]), name)
                bound = bind_params(op, params)
                log(f"{case}: specql plan {name}")
                t0 = time.perf_counter()
                report = plan_operation(url, op, bound)
                plan_s = time.perf_counter() - t0
                print(render_text(report).split("\nbatch statement 1:")[0].strip())
                for w in report.warnings:
                    print(f"  warning: {w[:160]}")
                log(f"{case}: the real run")
                query, values = call_sql(op, bound, confirm=op.policy.requires_confirmation, batch_size=None,
                                         resume=None)
                with connect(url, autocommit=True) as conn:
                    conn.pgconn.nonblocking = 0
                    t0 = time.perf_counter()
                    conn.execute(query, values).fetchone()
                    real = time.perf_counter() - t0
                    ends = [r[0] for r in conn.execute(
                        "SELECT extract(epoch FROM completed_at)::float8 FROM specql.batch_operation_logs "
                        "WHERE operation = %s ORDER BY completed_at", (name,))]
                real_batch = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else float("nan")
                est = report.estimate_seconds or 0.0
                sample_batch = report.sample.batch_seconds if report.sample and report.sample.batch_seconds else 0.0
                rows.append((case, name, report.records, report.batches, est, real, plan_s, sample_batch, real_batch))
                print(f"{case}: estimate {est:.2f}s, real {real:.2f}s, estimate / real {est / real:.2f} "
                      f"(specql plan itself took {plan_s:.2f}s); a batch: sampled {sample_batch * 1000:.3f} ms "
                      f"({report.sample.timed_by if report.sample else '-'}), real {real_batch * 1000:.3f} ms\n",
                      flush=True)
    print(f"{'case':<12} {'operation':<24} {'records':>9} {'batches':>8} {'estimate s':>10} {'real s':>8} "
          f"{'est/real':>8} {'plan s':>7} {'ms/batch sample':>15} {'real':>6}")
    for case, name, rec, b, est, real, plan_s, sample_batch, real_batch in rows:
        print(f"{case:<12} {name:<24} {rec:>9,} {b:>8,} {est:>10.2f} {real:>8.2f} {est / real:>8.2f} {plan_s:>7.2f} "
              f"{sample_batch * 1000:>15.3f} {real_batch * 1000:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
