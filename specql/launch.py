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

from dataclasses import dataclass
from functools import partial
from typing import Callable

from .model import Operation
from .run import Progress, RunError, bind_params, execute


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


def resolve(url: str, op: Operation, req: Request) -> str | None:
    """Who runs it, once check(op, req) has passed: --workers N, or `--resume ID` of a run that
    <op>_start began (a parallel run: its progress is in its chunks) goes to the workers; the
    latter without --workers gets the operation's max_workers (1 when it sets none), never
    more than the run's pending chunks, and is refused while the run is live (running, as the
    routine's SQ004). Returns a line saying so, for the command to print."""
    req.parallel = req.workers > 1
    if not (req.resume and op.parallel is not None and req.workers == 1):
        return None
    from .workers import parallel_run_for_resume
    found = parallel_run_for_resume(url, op, req.resume)
    if found is None:  # a run of the routine itself
        if not op.is_procedure:
            raise RunError(f"--resume: {op.name} is not resumable (only transaction: commit_per_batch runs "
                           f"and parallel runs are)")
        return None
    pending, state = found
    if state == "running":  # as the routine refuses it (SQ004); --workers N joins its workers
        raise RunError(f"cannot resume run {req.resume} of {op.name}: it is running (--workers N adds workers to it)")
    req.parallel = True
    req.workers = max(1, min(op.parallel.max_workers or 1, pending))
    return (f"{req.resume} is a parallel run ({pending} chunks pending): resuming it with {req.workers} "
            f"worker{'s' if req.workers > 1 else ''}, CALL {op.parallel.worker_ident}(operation_id => ..., "
            f"resume => true) each (--workers N for more)")


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
