"""What `specql run` runs: one operation, from its parameters or a staged file, on one
connection or on N workers. The command (cli.py) only parses options and shows the result.

Two choices, made once here:
- where the records come from: the parameters (bound by run.bind_params), a CSV file
  (csvimport: staged with COPY, data_source: csv_file) or a JSON file (jsonimport: a jsonb
  data_source staged with COPY); a staged source binds the parameters once its load exists;
- who runs it: the routine on this connection (run.execute) or <op>_start and N workers
  (workers.run_parallel, parallel: true).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .model import Operation
from .run import Progress, RunError, bind_params, execute, shown


@dataclass
class Request:
    params: list[str]  # NAME=VALUE / NAME=@FILE, as given
    confirm: bool = False
    batch_size: int | None = None
    resume: str | None = None  # an operation id
    workers: int = 1
    csv_file: str | None = None
    json_file: str | None = None
    rejects: str | None = None  # where a staged import writes its rejected records
    parallel: bool = False  # run by <op>_start's workers (--workers N, or --resume of a parallel run)


def check(op: Operation, req: Request) -> None:
    """Refuse what cannot run, before anything is staged or started."""
    if req.resume is not None:
        try:
            uuid.UUID(req.resume)
        except ValueError:
            raise RunError(f"--resume {shown(req.resume)!r}: not a run id (a UUID, as `specql status` "
                           f"shows it)") from None
    if req.rejects is not None:
        _check_rejects(op, req)
    if req.workers > 1:  # parallel: true (specql/workers.py): <op>_start, then N workers
        from .workers import check_workers
        check_workers(op, req.workers)
    if req.csv_file and op.csv is None:
        raise RunError(f"--csv: {op.name} does not import CSV (its data_source is not csv_file)")
    if req.resume and not op.is_procedure and req.workers == 1 and op.parallel is None:
        raise RunError(f"--resume: {op.name} is not resumable (only transaction: commit_per_batch runs are)")
    if req.json_file:  # a jsonb data_source staged from a file (specql/jsonimport.py)
        from .jsonimport import check_json_op
        check_json_op(op)
        if req.workers > 1:
            raise RunError(f"--json: {op.name} is not a parallel operation; --workers applies to those")


def _check_rejects(op: Operation, req: Request) -> None:
    """--rejects is written after the run: whatever would stop it is refused before."""
    where = f"--rejects {shown(req.rejects)}"
    if not (req.csv_file or req.json_file or (req.resume and op.stages_json)):
        raise RunError(f"{where}: only an import of --csv FILE or --json FILE has rejected records to write")
    source = Path(req.csv_file) if req.csv_file else None
    if source is not None and source.exists() and not source.is_file():  # read again for the rejected lines
        raise RunError(f"{where}: the rejected lines are read again from --csv {shown(req.csv_file)}, "
                       f"which is not a regular file (a pipe can be read once)")
    out = Path(req.rejects)
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists():
        if out.is_dir():
            raise RunError(f"{where}: is a directory")
        if not os.access(out, os.W_OK):
            raise RunError(f"{where}: not writable (permission denied)")
        if source is not None and out.resolve() == source.resolve():
            raise RunError(f"{where}: is the --csv file itself")
    elif not parent.is_dir():
        raise RunError(f"{where}: no directory {shown(str(parent))}")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"{where}: cannot create a file in {shown(str(parent))} (permission denied)")


def resolve(url: str, op: Operation, req: Request) -> str | None:
    """Who runs it, once check(op, req) has passed: --workers N, or `--resume ID` of a run that
    <op>_start began (a parallel run: its progress is in its chunks) goes to the workers; the
    latter without --workers gets the operation's max_workers (1 when it sets none), never
    more than the run's pending chunks, and is refused while a worker works on the run (as the
    routine's SQ004); a run <op>_start began that no worker has joined yet (running, no live
    worker) is taken up. Returns a line saying so, for the command to print."""
    req.parallel = req.workers > 1
    if not (req.resume and op.parallel is not None and req.workers == 1):
        return None
    from .workers import parallel_run_for_resume
    found = parallel_run_for_resume(url, op, req.resume)
    if found is None:  # a run of the routine itself
        if not op.is_procedure:
            if not _has_run(url, op, req.resume):
                raise RunError(f"--resume {req.resume}: no run of {op.name} with that id (`specql status "
                               f"--operation {op.name}` lists its runs)")
            raise RunError(f"--resume: {op.name} is not resumable (only transaction: commit_per_batch runs "
                           f"and parallel runs are)")
        return None
    pending, state, live = found
    if state == "running" and live != 0:  # as the routine refuses it (SQ004); --workers N joins its workers
        raise RunError(f"cannot resume run {req.resume} of {op.name}: it is running (--workers N adds workers to it)")
    req.parallel = True
    req.workers = max(1, min(op.parallel.max_workers or 1, pending))
    return (f"{req.resume} is a parallel run ({pending} chunks pending): resuming it with {req.workers} "
            f"worker{'s' if req.workers > 1 else ''}, CALL {op.parallel.worker_ident}(operation_id => ..., "
            f"resume => true) each (--workers N for more)")


def _has_run(url: str, op: Operation, operation_id: str) -> bool:
    import psycopg

    from .run import _one_line, open_connection
    with open_connection(url) as conn:
        try:
            return conn.execute("SELECT EXISTS (SELECT FROM specql.batch_operation_runs WHERE operation_id = %s::uuid "
                                "AND operation = %s)", (operation_id, op.name)).fetchone()[0]
        except psycopg.Error as exc:
            raise RunError(f"--resume {operation_id}: {_one_line(exc)}") from None


def launch(url: str, op: Operation, req: Request, *, on_progress: Callable[[Progress], None] = lambda p: None,
           on_notice: Callable[[str], None] = lambda m: None) -> dict:
    """Run the operation as `req` asks, once check(op, req) has passed (the command calls it
    before its progress bar appears); the result row as a dict (with a parallel run's
    per-worker figures under "workers")."""
    runner = execute
    if req.workers > 1 or req.parallel:
        from .workers import run_parallel
        runner = partial(run_parallel, workers=req.workers)
    staged_json = bool(req.json_file)
    if not staged_json and req.resume and op.stages_json:  # a resume of a staged run reads its load again
        from .jsonimport import resumes_staged
        staged_json = resumes_staged(url, op, req.resume)
    common = dict(confirm=req.confirm, batch_size=req.batch_size, resume=req.resume,
                  on_progress=on_progress, on_notice=on_notice)
    if staged_json:
        from .jsonimport import run_json
        return run_json(url, op, req.json_file, req.params, rejects=req.rejects, execute=runner,
                        bind_params=bind_params, **common)
    if op.csv is not None:  # data_source: csv_file (specql/csvimport.py)
        from .csvimport import run_csv
        return run_csv(url, op, req.csv_file, req.params, rejects=req.rejects, execute=runner,
                       bind_params=bind_params, overlap=runner is execute, **common)
    return runner(url, op, bind_params(op, req.params), **common)
