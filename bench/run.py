#!/usr/bin/env python
"""Benchmark specql's generated batch routines against one plain SQL statement.

For every size N (default 100k and 1M rows) and every case it seeds identical fresh
tables, times the plain statement and the generated routine on them (alternating which
goes first), checks that both changed exactly the same rows, and prints records/second,
the routine/plain ratio, and how each side's time grows from the smallest to the largest
N.  Everything runs on ONE embedded PostgreSQL started by this script.

    /work/venv/bin/python bench/run.py
    /work/venv/bin/python bench/run.py --sizes 100000 --cases update_ids --batch-size 100
    /work/venv/bin/python bench/run.py --steps [bench/steps.py's options]   # issue 11: select step -> update

See bench/README.md for what is measured and the targets.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from psycopg import sql  # noqa: E402

from specql.database import connect, embedded_server, throwaway_database  # noqa: E402
from specql.generate import generate  # noqa: E402
from specql.migrate import migrate  # noqa: E402

ENTITIES = HERE / "entities"
SCHEMA = "bench"
TABLE = "bench.bench_item"
TEMPLATE = "bench.bench_item_template"
COLUMNS = ("id", "status", "amount", "category", "updated_at", "payload")

FROM_STATUS, TO_STATUS = "pending", "done"

CASES = {
    # name: (label, routine, target ratio at the largest N)
    "update_cond": ("condition-driven update", "bench_update_by_status", 1.0),
    "update_ids": ("id-array update", "bench_update_by_ids", 0.9),
    "delete": ("condition delete", "bench_delete_by_status", 0.15),
    "insert": ("jsonb insert", "bench_insert_rows", 0.3),
}
GROWTH_LIMIT = 1.2  # routine growth / plain growth, smallest -> largest N

# Key types (--keys): the bench entity's `id: bigint` is rewritten to each, in a database of its
# own on the same server. A uuid or text key is random against the heap's order (md5 of the
# row number), the case a keyset walk over the key visits the heap randomly in. The jsonb
# insert runs on the bigint key only (it walks no key). Targets per key type (issue 15).
KEY_TYPES = {
    # key: (field type in the YAML, SQL type, seed expression of row number g)
    "bigint": ("bigint", "bigint", "g::bigint"),
    "uuid": ("uuid", "uuid", "md5(g::text)::uuid"),
    "text": ("string", "text", "md5(g::text)"),
}
KEY_TARGETS = {"update_cond": 0.95, "update_ids": 0.8, "delete": 0.5}  # uuid and text keys
KEY = "bigint"  # the key type of the cases being run (set per key type by main)


def case_name(case: str, key: str) -> str:
    """A case's name in the results: update_cond (bigint), update_cond@uuid, ..."""
    return case if key == "bigint" else f"{case}@{key}"


def case_info(name: str) -> tuple[str, str, float]:
    """(label, routine, target) of a result's case name."""
    case, _, key = name.partition("@")
    label, routine, target = CASES[case]
    if key:
        return f"{label} ({key} key)", routine, KEY_TARGETS[case]
    return label, routine, target


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def prepare_entities(batch_size: int, workdir: Path, key: str = "bigint") -> Path:
    """The bench entities, with every batch_size rewritten when it is not the default, and the
    key's type rewritten for a key type other than bigint."""
    target = workdir / f"entities_{key}"
    target.mkdir()
    for src in sorted(ENTITIES.glob("*.y*ml")):
        text = src.read_text("utf-8")
        text, n = re.subn(r"(?m)^(\s*batch_size:\s*)\d+\s*$", rf"\g<1>{batch_size}", text)
        if n == 0:
            raise SystemExit(f"{src}: no batch_size to rewrite")
        text, n = re.subn(r"(?m)^(  id:\s*)bigint\s*$", rf"\g<1>{KEY_TYPES[key][0]}", text)
        if n != 1:
            raise SystemExit(f"{src}: no `id: bigint` field to rewrite")
        (target / src.name).write_text(text, "utf-8")
    return target


def generate_and_migrate(entities: Path, workdir: Path, url: str) -> Path:
    out = workdir / "generated"
    result = generate([str(entities)], out)
    for w in result.warnings:
        log(f"specql warning: {w}")
    lines: list[str] = []
    rc = migrate(out / "migrations", url, echo=lines.append)
    if rc != 0:
        raise SystemExit("migration failed:\n" + "\n".join(lines))
    with connect(url, autocommit=True) as conn:
        # Keep the generated table (with its generated DDL) as the template of every fresh
        # table; the routines reference bench.bench_item by name.
        conn.execute(f"ALTER TABLE {TABLE} RENAME TO bench_item_template")
    return out / "migrations"


def source_version() -> str:
    """The commit the generator and templates come from (+ 'modified' when they differ from it)."""
    import subprocess
    root = HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "specql", "templates"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in specql/ or templates/' if dirty else ''}"


def settings(conn) -> str:
    names = ("server_version", "shared_buffers", "work_mem", "max_wal_size", "jit", "fsync",
             "synchronous_commit", "full_page_writes")
    return ", ".join(f"{n}={conn.execute(f'SHOW {n}').fetchone()[0]}" for n in names)


def create_seed(conn, n: int, match_fraction: float) -> int:
    """bench.seed: the rows every update/delete measurement starts from. Returns its size.

    N rows match the condition (status 'pending'); with match_fraction < 1 the table has
    N / match_fraction rows and the others are 'archived'.
    """
    total = round(n / match_fraction)
    per_mille = round(match_fraction * 1000)
    conn.execute("DROP TABLE IF EXISTS bench.seed")
    conn.execute(
        f"""
        CREATE TABLE bench.seed AS
        SELECT {KEY_TYPES[KEY][2]} AS id,
               CASE WHEN %s >= 1000 OR g %% 1000 < %s THEN 'pending' ELSE 'archived' END AS status,
               round((g %% 100000)::numeric / 100, 2) AS amount,
               (g %% 50)::integer AS category,
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS updated_at,
               jsonb_build_object('n', g, 'tag', 't' || (g %% 7)) AS payload
        FROM generate_series(1, %s) AS g
        """,
        (per_mille, per_mille, total),
    )
    got = conn.execute("SELECT count(*) FROM bench.seed WHERE status = 'pending'").fetchone()[0]
    if got != n:
        raise SystemExit(f"seed has {got} matching rows, wanted {n} (choose a match fraction dividing N)")
    return total


def fresh_table(conn, with_rows: bool) -> None:
    """A brand-new bench.bench_item (same DDL and indexes as generated), vacuumed, analyzed
    and checkpointed, so every measurement starts from the same state."""
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (LIKE {TEMPLATE} INCLUDING ALL) WITH (autovacuum_enabled = false)")
    if with_rows:
        # In the order the rows were made (row number g, kept in payload.n): a bigint key is then
        # in heap order, a uuid or text key (md5 of g) random against it, as in a table that
        # received its rows over time.
        conn.execute(f"INSERT INTO {TABLE} SELECT * FROM bench.seed ORDER BY (payload ->> 'n')::bigint")
    conn.execute(f"VACUUM (ANALYZE) {TABLE}")
    conn.execute("CHECKPOINT")
    # Warm the cache the same way for both sides: read the heap and the primary key.
    if with_rows:
        conn.execute(f"SELECT count(*) FROM {TABLE}")
        conn.execute(f"SELECT count(*) FROM (SELECT id FROM {TABLE} ORDER BY id) AS s")


def table_fingerprint(conn) -> tuple:
    """What both sides must agree on after the change (updated_at only: changed or not)."""
    return conn.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE status = %s),
               count(*) FILTER (WHERE updated_at >= timestamptz '2025-01-01'),
               coalesce(sum(hashtextextended(concat_ws('|', id, status, amount, category, payload::text), 0)
                            ::numeric), 0)
        FROM {TABLE}
        """,
        (TO_STATUS,),
    ).fetchone()


# ----------------------------------------------------------------------- insert data


def insert_payloads(n: int) -> tuple[bytes, str]:
    """The same n rows as COPY text and as a JSON array (built before any timing)."""
    copy_lines, json_items = [], []
    for i in range(1, n + 1):
        amount = f"{(i % 100000) / 100:.2f}"
        cat = i % 50
        ts = f"2024-01-{1 + (i // 86400) % 28:02d}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}+00:00"
        payload = f'{{"n": {i}, "tag": "t{i % 7}"}}'
        copy_lines.append(f"{i}\tnew\t{amount}\t{cat}\t{ts}\t{payload}\n")
        json_items.append(f'{{"id": {i}, "status": "new", "amount": {amount}, "category": {cat}, '
                          f'"updated_at": "{ts}", "payload": {payload}}}')
    return "".join(copy_lines).encode(), "[" + ",".join(json_items) + "]"


# ------------------------------------------------------------------------ measuring

TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _cpu_total() -> tuple[int, int]:
    """(all jiffies, busy jiffies) of the machine."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(vals), sum(vals) - vals[3] - vals[4]  # idle + iowait


def _cpu_of(pid: int) -> int:
    """utime + stime of a process, in jiffies (0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait s) until the machine's CPUs are mostly idle: other people's
    work on this shared machine distorts timings. Returns the last busy fraction."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        a = _cpu_total()
        time.sleep(0.5)
        b = _cpu_total()
        busy = (b[1] - a[1]) / max(1, b[0] - a[0])
        if busy < threshold or time.monotonic() >= deadline:
            if waited:
                log(f"    machine {'quiet' if busy < threshold else 'still busy'} ({busy:.0%} CPU busy)")
            return busy
        if not waited:
            log(f"    machine busy ({busy:.0%} CPU), waiting up to {max_wait:.0f}s")
            waited = True


class MemorySampler:
    """Polls /proc/<pid>/status of a backend: peak VmRSS and RssAnon, final VmHWM (kB)."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.path = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.peak_rss = self.peak_anon = self.hwm = 0
        self.ok = self.path.exists()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[str, int]:
        out = {}
        for line in self.path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def _sample(self) -> None:
        try:
            v = self._read()
        except OSError:
            self.ok = False
            return
        self.peak_rss = max(self.peak_rss, v.get("VmRSS", 0))
        self.peak_anon = max(self.peak_anon, v.get("RssAnon", 0))
        self.hwm = max(self.hwm, v.get("VmHWM", 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        if self.ok:
            self._sample()
            self.base_anon = self.peak_anon
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.ok:
            self._stop.set()
            self._thread.join()
            self._sample()


@dataclass
class Measurement:
    seconds: float
    rows: int
    wal_bytes: int
    fingerprint: tuple
    server_ms: float | None = None  # routine: completed_at - started_at
    batches: int | None = None
    mem: dict = field(default_factory=dict)
    others_cpu: float = 0.0  # CPUs used by other processes during the timing (0..NCPU)
    backend_cpu: float = 0.0  # CPU seconds the server backend itself used


def _measure(url: str, admin, fn, sample_memory: bool, quiet_wait: float) -> Measurement:
    with connect(url, autocommit=True) as conn:
        # Blocking libpq: in psycopg's default non-blocking mode libpq memmoves its output
        # buffer after every partial send, which makes sending one big parameter (the 140 MB
        # jsonb of the 1M-row insert) quadratic in the client: ~6 s of client CPU here.
        conn.pgconn.nonblocking = 0
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SELECT 1 FROM bench.bench_item LIMIT 1")  # relcache warm in this backend
        lsn0 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        sampler = MemorySampler(pid) if sample_memory else None
        if quiet_wait > 0:
            wait_quiet(quiet_wait)
        if sampler:
            sampler.__enter__()
        try:
            cpu0, mine0, backend0 = _cpu_total(), time.process_time(), _cpu_of(pid)
            t0 = time.perf_counter()
            rows, extra = fn(conn)
            seconds = time.perf_counter() - t0
            cpu1, mine1, backend1 = _cpu_total(), time.process_time(), _cpu_of(pid)
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
        others = ((cpu1[1] - cpu0[1]) - (backend1 - backend0)) / TICKS - (mine1 - mine0)
        wal = admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0]
    m = Measurement(seconds, rows, int(wal), table_fingerprint(admin), **extra)
    m.others_cpu = max(0.0, others / seconds)
    m.backend_cpu = (backend1 - backend0) / TICKS
    if sampler and sampler.ok:
        m.mem = {"peak_anon_mb": sampler.peak_anon / 1024, "peak_rss_mb": sampler.peak_rss / 1024,
                 "vmhwm_mb": sampler.hwm / 1024}
    return m


def call_routine(conn, routine: str, args: dict) -> tuple[int, dict]:
    names = list(args)
    query = sql.SQL("SELECT status, processed_records, failed_records, batch_count, "
                    "extract(epoch FROM completed_at - started_at) * 1000 FROM {}.{}({})").format(
        sql.Identifier(SCHEMA), sql.Identifier(routine),
        sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder()) for k in names))
    # Values are pre-rendered text: psycopg sends a str as 'unknown', so the server parses it
    # as the parameter's type (bigint[], jsonb) and no client-side adaptation is timed.
    status, processed, failed, batches, ms = conn.execute(query, [args[k] for k in names]).fetchone()
    if status != "completed" or failed:
        raise SystemExit(f"{routine}: status {status}, failed_records {failed}")
    return processed, {"server_ms": float(ms), "batches": batches}


def plain_fn(case: str, data):
    if case == "update_cond":
        return lambda c: (c.execute(
            f"UPDATE {TABLE} SET status = %s, updated_at = CURRENT_TIMESTAMP WHERE status = %s",
            (TO_STATUS, FROM_STATUS)).rowcount, {})
    if case == "update_ids":
        return lambda c: (c.execute(
            f"UPDATE {TABLE} SET status = %s, updated_at = CURRENT_TIMESTAMP WHERE id = ANY(%s::{KEY_TYPES[KEY][1]}[])",
            (TO_STATUS, data)).rowcount, {})
    if case == "delete":
        return lambda c: (c.execute(f"DELETE FROM {TABLE} WHERE status = %s", (FROM_STATUS,)).rowcount, {})
    if case == "insert":
        def copy(c):
            cur = c.cursor()
            with cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                view = memoryview(data[0])
                for i in range(0, len(view), 1 << 20):
                    cp.write(view[i:i + (1 << 20)])
            return cur.rowcount, {}
        return copy
    raise AssertionError(case)


def routine_fn(case: str, data, routine: str | None = None):
    routine = routine or CASES[case][1]
    if case == "update_cond":
        return lambda c: call_routine(c, routine, {"from_status": FROM_STATUS, "to_status": TO_STATUS})
    if case == "update_ids":
        return lambda c: call_routine(c, routine, {"ids": data, "to_status": TO_STATUS})
    if case == "delete":
        return lambda c: call_routine(c, routine, {"del_status": FROM_STATUS})
    if case == "insert":
        return lambda c: call_routine(c, routine, {"rows": data[1]})
    raise AssertionError(case)


@dataclass
class Result:
    case: str
    n: int
    plain: list[Measurement]
    routine: list[Measurement]
    parse: Measurement | None = None  # insert: sending + parsing the jsonb argument alone

    @staticmethod
    def _median(ms: list[Measurement]) -> float:
        return statistics.median(m.seconds for m in ms)

    @property
    def t_plain(self) -> float:
        return self._median(self.plain)

    @property
    def t_routine(self) -> float:
        return self._median(self.routine)

    @property
    def best_plain(self) -> float:
        return min(m.seconds for m in self.plain)

    @property
    def best_routine(self) -> float:
        return min(m.seconds for m in self.routine)

    @property
    def ratio(self) -> float:
        """Median over repeats of plain time / routine time, each pair measured back to back
        (robust against the machine drifting between repeats)."""
        return statistics.median(p.seconds / r.seconds for p, r in zip(self.plain, self.routine))

    @property
    def ratio_range(self) -> str:
        rs = [p.seconds / r.seconds for p, r in zip(self.plain, self.routine)]
        return f"{min(rs):.2f}-{max(rs):.2f}"

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(p.backend_cpu / max(r.backend_cpu, 0.01) for p, r in zip(self.plain, self.routine))


def run_case(url: str, admin, case: str, n: int, repeats: int, order_seed: int, data,
             quiet_wait: float) -> Result:
    plain, routine = [], []
    expected_rows = n
    for r in range(repeats):
        sides = ["plain", "routine"] if (order_seed + r) % 2 == 0 else ["routine", "plain"]
        for side in sides:
            fresh_table(admin, with_rows=(case != "insert"))
            fn = plain_fn(case, data) if side == "plain" else routine_fn(case, data)
            m = _measure(url, admin, fn, sample_memory=(case == "insert"), quiet_wait=quiet_wait)
            (plain if side == "plain" else routine).append(m)
            extra = f", {m.batches} batches, server {m.server_ms / 1000:.3f}s" if m.batches is not None else ""
            mem = f", backend peak anon {m.mem['peak_anon_mb']:.0f} MB" if m.mem else ""
            noise = f", other processes used {m.others_cpu:.2f} CPU" if m.others_cpu >= 0.1 else ""
            log(f"  {case} N={n:,} {side:7s}: {m.seconds:.3f}s (backend CPU {m.backend_cpu:.2f}s), {m.rows:,} rows, "
                f"WAL {m.wal_bytes / 2**20:.0f} MB{extra}{mem}{noise}")
            if m.rows != expected_rows:
                raise SystemExit(f"FAIL: {case} N={n} {side} changed {m.rows} rows, expected {expected_rows}")
        if plain[-1].fingerprint != routine[-1].fingerprint:
            raise SystemExit(f"FAIL: {case} N={n}: tables differ after plain and routine:\n"
                             f"  plain   {plain[-1].fingerprint}\n  routine {routine[-1].fingerprint}")
    result = Result(case, n, plain, routine)
    if case == "insert":
        # Reference: what the jsonb argument alone costs (client -> server, jsonb_in), before
        # the routine runs a single statement.
        m = _measure(url, admin, lambda c: (c.execute("SELECT jsonb_array_length(%s::jsonb)", (data[1],))
                                            .fetchone()[0], {}),
                     sample_memory=True, quiet_wait=quiet_wait)
        log(f"  insert N={n:,} jsonb argument alone (send + parse): {m.seconds:.3f}s, "
            f"backend peak anon {m.mem.get('peak_anon_mb', 0):.0f} MB")
        result.parse = m
    return result


# ------------------------------------------------------------------------ reporting


def report(results: list[Result], sizes: list[int], batch_size: int, out=sys.stdout) -> bool:
    print(f"\nbatch_size {batch_size}; times are medians over repeats; ratio = routine rec/s / plain rec/s "
          "(median of the per-repeat ratios, plain and routine timed back to back)", file=out)
    hdr = (f"{'case':<34} {'N':>9} {'plain s':>8} {'routine s':>9} {'plain rec/s':>12} {'routine rec/s':>13} "
           f"{'ratio':>6} {'(range)':>11} {'cpu ratio':>9} {'WAL p/r MB':>11} {'srv s':>7} {'noise':>5}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    by = {(r.case, r.n): r for r in results}
    for r in results:
        tp, tr = r.t_plain, r.t_routine
        wal = f"{statistics.median(m.wal_bytes for m in r.plain) / 2**20:.0f}/" \
              f"{statistics.median(m.wal_bytes for m in r.routine) / 2**20:.0f}"
        srv = statistics.median(m.server_ms for m in r.routine) / 1000
        noise = max(m.others_cpu for m in r.plain + r.routine)
        print(f"{case_info(r.case)[0]:<34} {r.n:>9,} {tp:>8.3f} {tr:>9.3f} {r.n / tp:>12,.0f} {r.n / tr:>13,.0f} "
              f"{r.ratio:>6.2f} {r.ratio_range:>11} {r.cpu_ratio:>9.2f} {wal:>11} {srv:>7.3f} {noise:>5.2f}", file=out)
    print("cpu ratio = the same ratio from the backend's CPU seconds (less sensitive to other load on the "
          "machine); srv s = the routine's own time (completed_at - started_at), median; noise = most CPUs "
          "other processes (incl. the server's WAL writer/checkpointer) used during one timing", file=out)
    mems = [r for r in results if r.case == "insert"]
    if mems:
        print("\njsonb insert: backend memory (peak private RssAnon / peak VmRSS / VmHWM, MB)", file=out)
        for r in mems:
            sides = [("COPY", r.plain), ("routine", r.routine)]
            if r.parse:
                sides.append(("jsonb argument alone", [r.parse]))
            for side, ms in sides:
                m = max(ms, key=lambda m: m.mem.get("peak_anon_mb", 0))
                if m.mem:
                    print(f"  N={r.n:>9,} {side:<8} {m.mem['peak_anon_mb']:>8.0f} / {m.mem['peak_rss_mb']:>6.0f} / "
                          f"{m.mem['vmhwm_mb']:>6.0f}   ({m.seconds:.2f}s)", file=out)
                else:
                    print(f"  N={r.n:>9,} {side:<8} (no /proc access to the backend)", file=out)
    small, large = min(sizes), max(sizes)
    cases = list(dict.fromkeys(r.case for r in results))
    if small != large:
        print(f"\ngrowth = t({large:,}) / t({small:,}) from the median times; growth ratio = routine growth / "
              "plain growth; (from best times) = the same ratio from each side's minimum time", file=out)
        print(f"{'case':<34} {'plain growth':>12} {'routine growth':>14} {'growth ratio':>12} {'(from best times)':>18}",
              file=out)
        for c in cases:
            a, b = by.get((c, small)), by.get((c, large))
            if a and b:
                gp, gr = b.t_plain / a.t_plain, b.t_routine / a.t_routine
                gb = (b.best_routine / a.best_routine) / (b.best_plain / a.best_plain)
                print(f"{case_info(c)[0]:<34} {gp:>12.2f} {gr:>14.2f} {gr / gp:>12.2f} {gb:>18.2f}", file=out)
    print(f"\nverdict (targets are for batch_size 1000 at N={large:,}"
          f"{'' if batch_size == 1000 else f'; this run used batch_size {batch_size}'})", file=out)
    ok = True
    for c in cases:
        b = by.get((c, large))
        if not b:
            continue
        label, _, target = case_info(c)
        ratio = b.ratio
        passed = ratio >= target
        ok &= passed
        vs = "COPY" if c == "insert" else "plain statement"
        lo, hi = (float(x) for x in b.ratio_range.split("-"))
        shaky = " (the repeats straddle the target: within run-to-run noise)" if lo < target <= hi else ""
        print(f"  {'PASS' if passed else 'FAIL'}  {label}: ratio {ratio:.3f} (target >= {target} x {vs}){shaky}",
              file=out)
        a = by.get((c, small))
        if a and small != large:
            g = (b.t_routine / a.t_routine) / (b.t_plain / a.t_plain)
            gb = (b.best_routine / a.best_routine) / (b.best_plain / a.best_plain)
            passed = g <= GROWTH_LIMIT
            ok &= passed
            shaky = (f" (from best times {gb:.2f}: within run-to-run noise)"
                     if (gb <= GROWTH_LIMIT) != passed else "")
            print(f"  {'PASS' if passed else 'FAIL'}  {label}: growth ratio {g:.3f} (target <= {GROWTH_LIMIT}){shaky}",
                  file=out)
    return ok


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--steps" in argv:  # issue 11's case (a select step, then an update of its output): bench/steps.py
        import steps
        return steps.main([a for a in argv if a != "--steps"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts (default %(default)s)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--keys", default=",".join(KEY_TYPES),
                    help=f"comma-separated key types of the id column (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=1000, help="batch_size for every operation (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per side for N >= 500k (default 3)")
    ap.add_argument("--repeat-small", type=int, default=5, help="measurements per side for N < 500k (default 5)")
    ap.add_argument("--match-fraction", type=float, default=1.0,
                    help="share of the table the update/delete condition matches (default 1.0)")
    ap.add_argument("--id-order", choices=("sorted", "shuffled"), default="sorted",
                    help="order of the id array for update_ids (default sorted, as SELECT ... ORDER BY id)")
    ap.add_argument("--quiet-wait", type=float, default=5,
                    help="before each timing wait up to this many seconds for the CPUs to be idle "
                         "(shared machine; 0 = never wait; default %(default)s)")
    ap.add_argument("--keep-sql", metavar="DIR", help="copy the generated migrations here")
    ap.add_argument("--steps", action="store_true",
                    help="run bench/steps.py instead (issue 11: a select step, then an update of its output, vs "
                         "the update with the condition directly); the other options are then steps.py's")
    args = ap.parse_args(argv)

    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not 0 < args.match_fraction <= 1:
        ap.error("--match-fraction must be in (0, 1]")

    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if [k for k in keys if k not in KEY_TYPES]:
        ap.error(f"unknown key type(s) in {args.keys}; choose from {', '.join(KEY_TYPES)}")

    global KEY
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="specql-bench-") as tmp:
        workdir = Path(tmp)
        log("starting embedded PostgreSQL")
        with embedded_server() as server:
            order_seed = 0
            for key in keys:
                KEY = key
                key_cases = [c for c in cases if key == "bigint" or c != "insert"]
                if not key_cases:
                    continue
                entities = prepare_entities(args.batch_size, workdir, key)
                with throwaway_database(server, prefix=f"specql_bench_{key}") as url:
                    (workdir / key).mkdir()
                    migrations = generate_and_migrate(entities, workdir / key, url)
                    if args.keep_sql:
                        Path(args.keep_sql, key).mkdir(parents=True, exist_ok=True)
                        for f in migrations.glob("*.sql"):
                            shutil.copy(f, Path(args.keep_sql, key))
                    with connect(url, autocommit=True) as admin:
                        info = settings(admin)
                        log(info)
                        print(f"specql: {source_version()}; key: {key}; server: {info}")
                        for n in sizes:
                            repeats = args.repeat if n >= 500_000 else args.repeat_small
                            if any(c != "insert" for c in key_cases):
                                log(f"seeding {n:,} matching rows ({key} key)")
                                total = create_seed(admin, n, args.match_fraction)
                                log(f"seed table: {total:,} rows")
                            for case in key_cases:
                                log(f"{case} N={n:,} {key} key ({repeats} run(s) per side)")
                                if case == "update_ids":
                                    ids = [r[0] for r in admin.execute(
                                        "SELECT id::text FROM bench.seed WHERE status = %s ORDER BY "
                                        + ("id" if args.id_order == "sorted" else "hashtext(id::text), id"),
                                        (FROM_STATUS,))]
                                    data = "{" + ",".join(ids) + "}"  # array literal, rendered once
                                elif case == "insert":
                                    data = insert_payloads(n)
                                else:
                                    data = None
                                result = run_case(url, admin, case, n, repeats, order_seed, data, args.quiet_wait)
                                result.case = case_name(case, key)
                                results.append(result)
                                order_seed += 1
                                data = None
    ok = report(results, sizes, args.batch_size)
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
