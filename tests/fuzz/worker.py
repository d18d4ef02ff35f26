"""Run specql on one mutated file in a child process with a memory and a time limit.

Why a child: an alias bomb or a deep nesting can take gigabytes or crash the interpreter;
the child has RLIMIT_AS (1 GB by default), the parent kills it after a deadline and
starts a new one. Inside, specql runs in-process through click's CliRunner (the same
`main` as the console script), which is what makes thousands of files a minute possible.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checks import TIME_LIMIT, check_cli, check_sql_static
from .mutate import FuzzCase

MEMORY_LIMIT = 1 << 30
KEEP_OUTPUT = 4000  # characters of each command's output sent back


@dataclass
class Outcome:
    case: FuzzCase
    validate_code: int | None = None
    generate_code: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    output: str = ""  # the start of validate's stderr and generate's stderr
    sql_files: list[str] = field(default_factory=list)  # generated files, absolute paths
    entity_file: str = ""  # where the mutated file was written (removed by Worker.cleanup)
    elapsed: float = 0.0


def _child(conn, memory_limit: int) -> None:
    import resource

    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from click.testing import CliRunner

    from specql.cli import main

    runner = CliRunner()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        conn.send(_run_one(runner, main, *request))


def _invoke(runner, main, args: list[str]) -> tuple[int | None, str, str, float]:
    start = time.perf_counter()
    try:
        result = runner.invoke(main, args, catch_exceptions=True)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += f"\nTraceback (escaped CliRunner): {type(result.exception).__name__}: {result.exception}"
    except BaseException as exc:  # noqa: BLE001 - anything at all is a finding
        code, stdout, stderr = None, "", f"Traceback (worker): {type(exc).__name__}: {exc}"
    return code, stdout, stderr, time.perf_counter() - start


def _run_one(runner, main, folder: str, filename: str, content: bytes, static: bool) -> dict:
    os.chdir(folder)
    try:
        Path(filename).write_bytes(content)
    except OSError as exc:
        return {"failures": [("unwritable_file_name", f"{filename!r}: {exc}")]}
    arg = "./" + filename
    v_code, v_out, v_err, v_time = _invoke(runner, main, ["validate", arg])
    failures = check_cli("validate", v_code, v_out, v_err, v_time)
    g_code, g_out, g_err, g_time = _invoke(runner, main, ["generate", arg, "-o", "out"])
    failures += check_cli("generate", g_code, g_out, g_err, g_time)
    if v_code in (0, 1) and g_code in (0, 1) and v_code != g_code:
        failures.append(("validate_generate_disagree", f"validate {v_code}, generate {g_code}"))
    sql_files = sorted(str(p.resolve()) for p in Path("out", "migrations").glob("*.sql")) if g_code == 0 else []
    if static:
        for path in sql_files:
            try:
                failures += check_sql_static(Path(path).name, Path(path).read_text("utf-8"))
            except BaseException as exc:  # noqa: BLE001
                failures.append(("sql_unreadable", f"{type(exc).__name__}: {exc}"))
    return {"validate_code": v_code, "generate_code": g_code, "failures": failures,
            "output": (v_err[:KEEP_OUTPUT] + "\n--- generate:\n" + g_err[:KEEP_OUTPUT]),
            "sql_files": sql_files, "elapsed": v_time + g_time}


class Worker:
    """A child process that runs cases one after the other; restarted after a kill."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT, time_limit: float = TIME_LIMIT, static: bool = True):
        self.memory_limit, self.time_limit, self.static = memory_limit, time_limit, static
        self.ctx = multiprocessing.get_context("spawn")
        self.root = Path(tempfile.mkdtemp(prefix="specql-fuzz-"))
        self.proc = None
        self.count = 0

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_child, args=(child, self.memory_limit), daemon=True)
        self.proc.start()
        child.close()

    def run(self, case: FuzzCase) -> Outcome:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.count += 1
        folder = self.root / f"case{self.count}"
        folder.mkdir()
        outcome = Outcome(case, entity_file=str(folder / case.filename))
        start = time.perf_counter()
        try:
            self.conn.send((str(folder), case.filename, case.content, self.static))
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            self.kill()
            outcome.failures.append(("crash", f"worker unreachable: {exc}"))
            return outcome
        # Two commands, each allowed time_limit, plus start-up of a fresh child.
        if not self.conn.poll(2 * self.time_limit + 10):
            self.kill()
            outcome.failures.append(("timeout", f"no answer after {time.perf_counter() - start:.0f} s"))
            return outcome
        try:
            answer = self.conn.recv()
        except (EOFError, ConnectionError, OSError):
            code = self.proc.exitcode if self.proc else None
            self.kill()
            outcome.failures.append(("crash", f"worker died (exit code {code})"))
            return outcome
        for key, value in answer.items():
            setattr(outcome, key, [tuple(f) for f in value] if key == "failures" else value)
        if any("MemoryError" in detail for _, detail in outcome.failures):
            outcome.failures.append(("memory", "MemoryError under the memory limit"))
        return outcome

    def cleanup(self, outcome: Outcome) -> None:
        """Remove the case's folder (after any apply)."""
        shutil.rmtree(Path(outcome.entity_file).parent, ignore_errors=True)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (OSError, BrokenPipeError):
                pass
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
