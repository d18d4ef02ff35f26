#!/usr/bin/env python
"""Issue 11's benchmark: a select step followed by an update of its output, against the same
update written with the condition directly.

    /work/venv/bin/python bench/steps.py                                  # 100k and 1M rows, bigint and uuid keys
    /work/venv/bin/python bench/steps.py --sizes 100000 --keys bigint --repeat-small 3   # quick look
    /work/venv/bin/python bench/run.py --steps ...                        # the same, from run.py

Routines (bench/steps_entities/bench_item.yaml, batch_size 1000, stop_on_error, no progress rows):

    direct  bench_update_by_status(from_status, to_status): update, where_condition `status = :from_status`
    steps   bench_steps_select_update(from_status, to_status): step `pick` selects `status = :from_status`
            (output :picked_ids), step `change` updates `id IN (:picked_ids)` with the same update_data

each as a function (transaction per_batch) and as a procedure (`_proc`, commit_per_batch), plus the
plain `UPDATE ... WHERE status = $1` as a reference. One embedded PostgreSQL 18; every timing starts
from a fresh identical table (run.py's fresh_table) and empty specql run tables; both sides must leave
the same table (run.py's fingerprint) and change N rows. Per repeat the function pair, the procedure
pair and the plain statement run in rotating order, the two sides of a pair back to back, alternating
which goes first. Prints medians, the steps / direct time ratio (median of the per-repeat ratios),
growth from the smallest to the largest N, the backend's peak private memory (RssAnon, polled every
5 ms) and, for the steps routines, each step's own time from specql.batch_operation_steps.
Exit code 1 when a target fails (ratio <= 1.3 at the largest N; peak memory not growing with N).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as B  # noqa: E402
from specql.database import connect, embedded_server, throwaway_database  # noqa: E402

STEPS_ENTITIES = HERE / "steps_entities"
RATIO_LIMIT = 1.3  # steps time / direct time, at the largest N
# "Constant memory": the peak private memory at the largest N may exceed the smallest N's by at
# most this factor plus this many MB (sampling jitter, a larger plan cache entry, ...).
MEM_FACTOR, MEM_SLACK_MB = 1.1, 4.0

# side -> (routine or None for the plain statement, procedure?)
SIDES = {
    "plain": (None, False),
    "direct": ("bench_update_by_status", False),
    "steps": ("bench_steps_select_update", False),
    "direct_proc": ("bench_update_by_status_proc", True),
    "steps_proc": ("bench_steps_select_update_proc", True),
}
# mode -> its unit: the direct routine first, then the steps routine (and --variants of it)
PAIRS = {"function": ["direct", "steps"], "procedure": ["direct_proc", "steps_proc"]}

# --variants: a steps routine with a textual edit, created next to it as <routine>__<name> and
# timed in its mode's unit (after the pair), against the same direct routine. Not templates:
# measurements of a proposed template change (see bench/README.md).
WALK_LISTED = re.compile(r"(?m)^( *)-- The walk listed this batch's matching keys: they are the selection\.\n")
VARIANTS = {
    # name: (side it edits, what, [(pattern, replacement)])
    "async_commit": (
        "steps_proc", "the select step's batches commit without waiting for the WAL flush "
        "(SET LOCAL synchronous_commit = off in each select batch)",
        [(WALK_LISTED, "\\g<0>\\1PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);\n")]),
}
RUN_ROW = ("SELECT operation_id, status, processed_records, failed_records, batch_count, "
           "extract(epoch FROM completed_at - started_at) * 1000")


def variant_sql(migrations: Path, name: str) -> str:
    """The CREATE statement of a variant: its base routine, edited and renamed <routine>__<name>."""
    base_side, _, edits = VARIANTS[name]
    routine, procedure = SIDES[base_side]
    kind = "PROCEDURE" if procedure else "FUNCTION"
    head = f"CREATE OR REPLACE {kind} {B.SCHEMA}.{routine}("
    for f in sorted(migrations.glob("*.sql")):
        text = f.read_text("utf-8")
        start = text.find(head)
        if start >= 0:
            text = text[start:text.index("$specql$;", start) + len("$specql$;")]
            break
    else:
        raise SystemExit(f"{routine} not found in {migrations}")
    for pattern, replacement in edits:
        text, n = pattern.subn(replacement, text)
        if n == 0:
            raise SystemExit(f"variant {name}: its edit does not match the generated {routine} (templates changed?)")
    new = f"{routine}__{name}"
    text = text.replace(head, f"CREATE OR REPLACE {kind} {B.SCHEMA}.{new}(", 1)
    return text.replace(f"{routine}.", f"{new}.")  # the parameters' qualifiers


def side_fn(side: str):
    routine, procedure = SIDES[side]
    if routine is None:
        return lambda c: (c.execute(
            f"UPDATE {B.TABLE} SET status = %s, updated_at = CURRENT_TIMESTAMP WHERE status = %s",
            (B.TO_STATUS, B.FROM_STATUS)).rowcount, {})

    def call(c):
        args = {"from_status": B.FROM_STATUS, "to_status": B.TO_STATUS}
        if procedure:
            # A commit_per_batch procedure commits: CALLed outside a transaction block (autocommit).
            c.execute(f"CALL {B.SCHEMA}.{routine}(from_status => %(from_status)s, to_status => %(to_status)s)", args)
            row = c.execute(f"{RUN_ROW} FROM specql.batch_operation_runs ORDER BY started_at DESC LIMIT 1").fetchone()
        else:
            row = c.execute(f"{RUN_ROW} FROM {B.SCHEMA}.{routine}(from_status => %(from_status)s, "
                            f"to_status => %(to_status)s)", args).fetchone()
        _, status, processed, failed, batches, ms = row
        if status != "completed" or failed:
            raise SystemExit(f"{routine}: status {status}, failed_records {failed}")
        return processed, {"server_ms": float(ms), "batches": batches}
    return call


def reset(admin) -> None:
    """Empty run tables (the outputs' chunks and their TOAST included), then a fresh bench table."""
    admin.execute("TRUNCATE specql.batch_operation_outputs, specql.batch_operation_steps, "
                  "specql.batch_operation_runs CASCADE")
    B.fresh_table(admin, with_rows=True)


@dataclass
class Timing:
    m: B.Measurement
    step_s: dict = field(default_factory=dict)  # step name -> seconds (steps sides)


@dataclass
class Group:
    key: str
    n: int
    t: dict = field(default_factory=dict)  # side -> [Timing]

    def med(self, side: str) -> float:
        return statistics.median(x.m.seconds for x in self.t[side])

    def ratios(self, a: str, b: str, cpu: bool = False) -> list[float]:
        """Per repeat: time of a / time of b."""
        if cpu:
            return [x.m.backend_cpu / max(y.m.backend_cpu, 0.01) for x, y in zip(self.t[a], self.t[b])]
        return [x.m.seconds / y.m.seconds for x, y in zip(self.t[a], self.t[b])]

    def peak_anon(self, side: str) -> float:
        return max(x.m.mem.get("peak_anon_mb", 0) for x in self.t[side])

    def peak_hwm(self, side: str) -> float:
        return max(x.m.mem.get("vmhwm_mb", 0) for x in self.t[side])

    def step_med(self, side: str, step: str) -> float:
        return statistics.median(x.step_s[step] for x in self.t[side])


def measure(url: str, admin, side: str, n: int, quiet_wait: float) -> Timing:
    reset(admin)
    m = B._measure(url, admin, side_fn(side), sample_memory=True, quiet_wait=quiet_wait)
    timing = Timing(m)
    rows = m.rows
    if SIDES[side][0] and side.startswith("steps"):
        steps = admin.execute("SELECT step_name, status, processed_records, "
                              "extract(epoch FROM completed_at - started_at) FROM specql.batch_operation_steps "
                              "ORDER BY step_number").fetchall()
        if [s[0] for s in steps] != ["pick", "change"] or any(s[1] != "completed" for s in steps):
            raise SystemExit(f"FAIL: {side}: steps {steps}")
        timing.step_s = {name: float(sec) for name, _, _, sec in steps}
        rows = steps[1][2]  # the update step's changed rows (the run's result sums both steps)
        if steps[0][2] != n:
            raise SystemExit(f"FAIL: {side} N={n}: the select step selected {steps[0][2]} rows, expected {n}")
    if rows != n:
        raise SystemExit(f"FAIL: {side} N={n} changed {rows} rows, expected {n}")
    srv = f", server {m.server_ms / 1000:.3f}s, {m.batches} batches" if m.server_ms is not None else ""
    st = "".join(f", {k} {v:.3f}s" for k, v in timing.step_s.items())
    noise = f", other processes used {m.others_cpu:.2f} CPU" if m.others_cpu >= 0.1 else ""
    B.log(f"  {side:<23} N={n:,}: {m.seconds:.3f}s (backend CPU {m.backend_cpu:.2f}s){srv}{st}, "
          f"peak anon {m.mem.get('peak_anon_mb', 0):.1f} MB, VmHWM {m.mem.get('vmhwm_mb', 0):.0f} MB{noise}")
    return timing


def run_group(url: str, admin, key: str, n: int, repeats: int, modes: list[str], plain: bool,
              quiet_wait: float, seed: int) -> Group:
    g = Group(key, n, {s: [] for s in SIDES})
    for r in range(repeats):
        units = [PAIRS[m] if (seed + r) % 2 == 0 else PAIRS[m][::-1] for m in modes]
        if plain:
            units.append(("plain",))
        k = (seed + r) % len(units)
        units = units[k:] + units[:k]
        for unit in units:
            for side in unit:
                g.t[side].append(measure(url, admin, side, n, quiet_wait))
            fps = {g.t[s][-1].m.fingerprint for s in unit}
            if plain and g.t["plain"]:
                fps.add(g.t["plain"][-1].m.fingerprint)
            if len(fps) != 1:
                raise SystemExit(f"FAIL: N={n} {key}: tables differ after {unit}: {fps}")
    g.t = {s: v for s, v in g.t.items() if v}
    return g


def report(groups: list[Group], sizes: list[int], modes: list[str], out=sys.stdout) -> bool:
    rng = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    print("\ntimes: median over repeats (range); rec/s from the median; peak anon = the backend's peak private "
          "memory (RssAnon), max over repeats; VmHWM includes the shared buffers it touched", file=out)
    hdr = (f"{'key':<6} {'N':>9} {'side':<23} {'seconds':>8} {'(range)':>13} {'rec/s':>9} {'backend cpu':>11} "
           f"{'server s':>8} {'select s':>8} {'update s':>8} {'peak anon MB':>12} {'VmHWM MB':>8} {'noise':>5}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for g in groups:
        for side, ts in g.t.items():
            secs = [x.m.seconds for x in ts]
            srv = [x.m.server_ms / 1000 for x in ts if x.m.server_ms is not None]
            sel = f"{g.step_med(side, 'pick'):>8.3f}" if ts[0].step_s else f"{'':>8}"
            upd = f"{g.step_med(side, 'change'):>8.3f}" if ts[0].step_s else f"{'':>8}"
            print(f"{g.key:<6} {g.n:>9,} {side:<23} {g.med(side):>8.3f} {rng(secs):>13} {g.n / g.med(side):>9,.0f} "
                  f"{statistics.median(x.m.backend_cpu for x in ts):>11.2f} "
                  f"{(statistics.median(srv) if srv else float('nan')):>8.3f} {sel} {upd} "
                  f"{g.peak_anon(side):>12.1f} {g.peak_hwm(side):>8.0f} "
                  f"{max(x.m.others_cpu for x in ts):>5.2f}", file=out)
    print("server s = the routine's completed_at - started_at; select s / update s = the steps' own times "
          "(batch_operation_steps); noise = most CPUs other processes used during one timing", file=out)

    print("\nratio = steps time / direct time (median of the per-repeat ratios, the two timed back to back); "
          "cpu = the same from the backend's CPU seconds", file=out)
    print(f"{'key':<6} {'N':>9} {'steps side':<23} {'ratio':>6} {'(range)':>11} {'cpu':>5} {'steps/plain':>11} "
          f"{'direct/plain':>12}", file=out)
    for g in groups:
        for d, s in ((PAIRS[m][0], s) for m in modes for s in PAIRS[m][1:]):
            rs = g.ratios(s, d)
            vs = (f"{statistics.median(g.ratios(s, 'plain')):>11.2f} {statistics.median(g.ratios(d, 'plain')):>12.2f}"
                  if "plain" in g.t else "")
            print(f"{g.key:<6} {g.n:>9,} {s:<23} {statistics.median(rs):>6.2f} {rng(rs):>11} "
                  f"{statistics.median(g.ratios(s, d, cpu=True)):>5.2f} {vs}", file=out)

    small, large = min(sizes), max(sizes)
    by = {(g.key, g.n): g for g in groups}
    keys = list(dict.fromkeys(g.key for g in groups))
    if small != large:
        print(f"\ngrowth = t({large:,}) / t({small:,}) from the median times (x{large / small:.0f} rows); "
              "peak anon at both sizes", file=out)
        print(f"{'key':<6} {'side':<23} {'growth':>7} {'peak anon MB small -> large':>28}", file=out)
        for key in keys:
            a, b = by.get((key, small)), by.get((key, large))
            if not (a and b):
                continue
            for side in b.t:
                print(f"{key:<6} {side:<23} {b.med(side) / a.med(side):>7.2f} "
                      f"{a.peak_anon(side):>13.1f} -> {b.peak_anon(side):>8.1f}", file=out)

    print(f"\nverdict (N={large:,})", file=out)
    ok = True
    for key in keys:
        b = by.get((key, large))
        if not b:
            continue
        for mode in modes:
            d, s = PAIRS[mode][:2]  # the verdict is on the generated routines, not on --variants
            rs = b.ratios(s, d)
            r = statistics.median(rs)
            passed = r <= RATIO_LIMIT
            ok &= passed
            shaky = " (the repeats straddle the target)" if min(rs) <= RATIO_LIMIT < max(rs) else ""
            print(f"  {'PASS' if passed else 'FAIL'}  {key} key, {mode}: steps / direct time {r:.3f} "
                  f"(target <= {RATIO_LIMIT}){shaky}", file=out)
            a = by.get((key, small))
            if a and small != large:
                for side in (d, s):
                    lo, hi = a.peak_anon(side), b.peak_anon(side)
                    passed = hi <= lo * MEM_FACTOR + MEM_SLACK_MB
                    ok &= passed
                    print(f"  {'PASS' if passed else 'FAIL'}  {key} key, {side}: peak private memory "
                          f"{lo:.1f} MB at {small:,} -> {hi:.1f} MB at {large:,} (constant: <= {MEM_FACTOR} x + "
                          f"{MEM_SLACK_MB:.0f} MB)", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts (default %(default)s)")
    ap.add_argument("--keys", default="bigint,uuid", help="key types of the id column (default %(default)s)")
    ap.add_argument("--modes", default="function,procedure",
                    help="function (per_batch), procedure (commit_per_batch) (default %(default)s)")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain UPDATE reference")
    ap.add_argument("--batch-size", type=int, default=1000, help="batch_size of every operation (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per side for N >= 500k (default 3)")
    ap.add_argument("--repeat-small", type=int, default=5, help="measurements per side for N < 500k (default 5)")
    ap.add_argument("--quiet-wait", type=float, default=5,
                    help="before each timing wait up to this many seconds for idle CPUs (default %(default)s)")
    ap.add_argument("--keep-sql", metavar="DIR", help="copy the generated migrations here")
    ap.add_argument("--variants", default="",
                    help=f"also time edited steps routines: {'; '.join(f'{k}: {v[1]}' for k, v in VARIANTS.items())}")
    args = ap.parse_args(argv)

    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if [k for k in keys if k not in B.KEY_TYPES]:
        ap.error(f"unknown key type in {args.keys}; choose from {', '.join(B.KEY_TYPES)}")
    if [m for m in modes if m not in PAIRS]:
        ap.error(f"unknown mode in {args.modes}; choose from {', '.join(PAIRS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant in {args.variants}; choose from {', '.join(VARIANTS)}")
    for v in variants:
        base = VARIANTS[v][0]
        routine, procedure = SIDES[base]
        SIDES[f"{base}~{v}"] = (f"{routine}__{v}", procedure)
        next(u for u in PAIRS.values() if base in u).append(f"{base}~{v}")

    B.ENTITIES = STEPS_ENTITIES  # run.py's prepare_entities reads this folder
    started = time.perf_counter()
    groups: list[Group] = []
    with tempfile.TemporaryDirectory(prefix="specql-bench-steps-") as tmp:
        workdir = Path(tmp)
        B.log("starting embedded PostgreSQL")
        with embedded_server() as server:
            seed = 0
            for key in keys:
                B.KEY = key
                entities = B.prepare_entities(args.batch_size, workdir, key)
                with throwaway_database(server, prefix=f"specql_bench_steps_{key}") as url:
                    (workdir / key).mkdir()
                    migrations = B.generate_and_migrate(entities, workdir / key, url)
                    with connect(url, autocommit=True) as admin:
                        for v in variants:
                            admin.execute(variant_sql(migrations, v))
                    if args.keep_sql:
                        Path(args.keep_sql, key).mkdir(parents=True, exist_ok=True)
                        for f in migrations.glob("*.sql"):
                            (Path(args.keep_sql, key) / f.name).write_bytes(f.read_bytes())
                    with connect(url, autocommit=True) as admin:
                        info = B.settings(admin)
                        print(f"specql: {B.source_version()}; key: {key}; batch_size {args.batch_size}; server: {info}")
                        for n in sizes:
                            repeats = args.repeat if n >= 500_000 else args.repeat_small
                            B.log(f"seeding {n:,} matching rows ({key} key), {repeats} repeat(s)")
                            B.create_seed(admin, n, 1.0)
                            groups.append(run_group(url, admin, key, n, repeats, modes, not args.no_plain,
                                                    args.quiet_wait, seed))
                            seed += 1
    ok = report(groups, sizes, modes)
    B.log(f"done in {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
