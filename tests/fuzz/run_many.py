"""Fuzz specql with thousands of mutated entity files and print the numbers.

    .venv/bin/python tests/fuzz/run_many.py                 # 5000 files, seed 1
    .venv/bin/python tests/fuzz/run_many.py -n 20000 --seed 7 --workers 2 --apply 200
    .venv/bin/python tests/fuzz/run_many.py --seed 7 --only 1234   # replay one case
    .venv/bin/python tests/fuzz/run_many.py --sweep                # + every payload x field (~2,000 cases)

Not collected by pytest (its name is not test_*). Case i is built from
`random.Random(f"{seed}-{i}")`, so any case replays alone. Each runs `specql validate`
and `specql generate` in a worker process (1 GB address space, 5 s per command); a
sample of the cases that generate applies with psql to a throwaway database on an
embedded PostgreSQL (or SPECQL_DATABASE_URL). Failing inputs go to the findings folder,
one sub-folder per failure class, with what was done and what specql printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `import fuzz`

from fuzz.known import known_defect  # noqa: E402
from fuzz.mutate import RandomChooser, load_seeds, make_case, sweep_cases  # noqa: E402
from fuzz.worker import Worker  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="number of mutated files (default 5000)")
    ap.add_argument("--seed", default="1", help="run seed (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--apply", type=int, default=100, help="apply at most this many generated cases (default 100)")
    ap.add_argument("--findings", default="/tmp/specql-fuzz-findings", help="folder for failing inputs")
    ap.add_argument("--keep", type=int, default=10, help="inputs kept per failure class and message (default 10)")
    ap.add_argument("--only", type=int, help="run only case number ONLY (replay)")
    ap.add_argument("--json", help="also write the summary as JSON here")
    ap.add_argument("--sweep", action="store_true",
                    help="first run every payload in every user-text field of every example (about 2,000 files)")
    return ap.parse_args(argv)


class Stats:
    def __init__(self, findings: Path, keep: int):
        self.lock = threading.Lock()
        self.codes = collections.Counter()
        self.classes = collections.Counter()
        self.known = collections.Counter()
        self.kinds_by_class: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.examples: dict[str, str] = {}
        self.findings, self.keep = findings, keep
        self.applied = 0
        self.saved = collections.Counter()
        self.generated_kinds = collections.Counter()  # what reached generate exit 0
        self.slowest = (0.0, "")

    def record(self, index: int, outcome, failures) -> None:
        with self.lock:
            self.codes[f"validate={outcome.validate_code} generate={outcome.generate_code}"] += 1
            if outcome.generate_code == 0:
                self.generated_kinds.update(k.split("@")[-1] if "@" in k else k for k in outcome.case.kinds)
            if outcome.elapsed > self.slowest[0]:
                self.slowest = (outcome.elapsed, f"case {index}: {outcome.case.describe()[:200]}")
            for cls in {c for c, _ in failures}:
                self.classes[cls] += 1
                detail = next(d for c, d in failures if c == cls)
                for kind in outcome.case.kinds:
                    self.kinds_by_class[cls][kind.split("@")[0]] += 1
                if known_defect(outcome.case, cls):
                    self.known[cls] += 1
                self.examples.setdefault(cls, f"case {index}: {outcome.case.describe()[:300]} -> {detail[:300]}")
                self._save(index, cls, detail, outcome)

    def _save(self, index: int, cls: str, detail: str, outcome) -> None:
        # Up to `keep` inputs per distinct message (digits and paths blurred), so that one
        # frequent cause does not hide a rarer one of the same class.
        signature = re.sub(r"[0-9]+|/\S+", "#", detail)[:80]
        self.saved[(cls, signature)] += 1
        if self.saved[(cls, signature)] > self.keep:
            return
        folder = self.findings / cls
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"case{index}.yaml").write_bytes(outcome.case.content)
        (folder / f"case{index}.txt").write_text(
            f"case {index}\nseed file: {outcome.case.seed}\nfile name: {outcome.case.filename!r}\n"
            f"mutations: {', '.join(outcome.case.kinds)}\nclass: {cls}\ndetail: {detail}\n"
            f"validate exit {outcome.validate_code}, generate exit {outcome.generate_code}\n"
            f"--- specql printed (start):\n{outcome.output}\n", "utf-8", errors="backslashreplace")


def run_case(index: int, args, seeds, worker: Worker, applier, stats: Stats, budget, sweep) -> None:
    if index < 0:  # sweep cases are numbered -1, -2, ...
        case = sweep[-index - 1]
    else:
        case = make_case(RandomChooser(random.Random(f"{args.seed}-{index}")), seeds)
    outcome = worker.run(case)
    failures = list(outcome.failures)
    if applier is not None and outcome.generate_code == 0 and outcome.sql_files:
        with budget["lock"]:
            take = budget["left"] > 0
            budget["left"] -= take
        if take:
            failures += applier.apply(Path(outcome.entity_file), outcome.sql_files)
            with stats.lock:
                stats.applied += 1
    stats.record(index, outcome, failures)
    worker.cleanup(outcome)


def summary(stats: Stats, n: int, elapsed: float) -> dict:
    return {"files": n, "seconds": round(elapsed, 1), "exit_codes": dict(stats.codes.most_common()),
            "failure_classes": dict(stats.classes.most_common()), "known_open": dict(stats.known),
            "applied": stats.applied, "slowest": stats.slowest,
            "fields_reaching_generate": dict(stats.generated_kinds.most_common()),
            "kinds_by_class": {c: dict(k.most_common(8)) for c, k in stats.kinds_by_class.items()},
            "examples": stats.examples}


def main(argv=None) -> int:
    args = parse_args(argv)
    findings = Path(args.findings)
    if args.only is None:
        shutil.rmtree(findings, ignore_errors=True)
    seeds = load_seeds()
    sweep = sweep_cases(seeds) if args.sweep or (args.only is not None and args.only < 0) else []
    random.Random(0).shuffle(sweep)  # so that an --apply budget samples every seed and field
    indexes = [args.only] if args.only is not None else [-i - 1 for i in range(len(sweep))] + list(range(args.n))
    stats = Stats(findings, args.keep)
    budget = {"left": args.apply, "lock": threading.Lock()}
    local = threading.local()
    workers: list[Worker] = []

    def job(index: int, applier) -> None:
        if not hasattr(local, "worker"):
            local.worker = Worker()
            workers.append(local.worker)
        run_case(index, args, seeds, local.worker, applier, stats, budget, sweep)

    start = time.perf_counter()
    with _server(args.apply) as url:
        from fuzz.apply import Applier

        applier = Applier(url) if url else None
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for i, _ in enumerate(pool.map(lambda i: job(i, applier), indexes), start=1):
                if i % 500 == 0:
                    print(f"... {i} files, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    for w in workers:
        w.close()
    result = summary(stats, len(indexes), time.perf_counter() - start)
    print(json.dumps(result, indent=2, ensure_ascii=True))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=True), "utf-8")
    print(f"findings: {findings}", file=sys.stderr)
    return 1 if stats.classes else 0


def _server(apply: int):
    from contextlib import nullcontext

    from specql import database

    return database.server_url(None) if apply > 0 else nullcontext(None)


if __name__ == "__main__":
    sys.exit(main())
