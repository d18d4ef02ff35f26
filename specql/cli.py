"""The `specql` command line: thin click commands over the Python API."""

from __future__ import annotations

import sys

try:  # Ctrl-C while Python loads the command: exit 130 as later, not a traceback
    import contextlib
    import functools
    import json
    import os
    import signal
    import traceback

    import click

    from . import __version__
    from .diagnostics import Diagnostic, SpecError
except KeyboardInterrupt:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not kill the exit
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None


def _database_url(given: str | None) -> str:
    """--database-url (or the environment's), checked before anything connects: a string libpq
    cannot parse is a usage error naming the option, not an internal error later."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from .database import resolve_database_url

    url = resolve_database_url(given)
    if not url:
        raise click.UsageError("no database: pass --database-url or set SPECQL_DATABASE_URL")
    try:
        url.encode("utf-8")
        conninfo_to_dict(url)
    except (UnicodeEncodeError, psycopg.ProgrammingError) as exc:
        reason = "not valid UTF-8" if isinstance(exc, UnicodeEncodeError) else str(exc).strip()
        raise click.BadParameter(reason, param_hint="'--database-url'") from None
    return url


def _report(diagnostics: list[Diagnostic], fmt: str = "text") -> None:
    if fmt == "json":
        click.echo(json.dumps([d.as_dict() for d in diagnostics], indent=2))
        return
    for d in diagnostics:
        click.echo(d.format(), err=True)


def _guard(func):
    """Exit 1 with located diagnostics for user mistakes; exit 2, no traceback, for bugs."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            fmt = kwargs.get("fmt", "text")
            _report(exc.diagnostics, fmt)
            errors = sum(d.severity == "error" for d in exc.diagnostics)
            if fmt != "json":
                click.echo(f"{errors} error(s); nothing was written.", err=True)
            sys.exit(1)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            if _Group.as_program:  # ending anyway: another Ctrl-C must not interrupt the exit
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if os.environ.get("SPECQL_DEBUG"):
                traceback.print_exc()
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # an internal error: say so plainly
            if os.environ.get("SPECQL_DEBUG"):
                traceback.print_exc()
            click.echo(f"specql: internal error: {type(exc).__name__}: {exc} "
                       f"(set SPECQL_DEBUG=1 for the traceback)", err=True)
            sys.exit(2)

    return wrapper


class _Group(click.Group):
    """Usage mistakes are user-facing failures: exit 1 (SPEC §1), not click's 2."""

    as_program = False  # called by the `specql` script (no arguments), not in-process

    def main(self, *args, **kwargs):
        _Group.as_program = not args and not kwargs
        kwargs["standalone_mode"] = False
        try:
            try:
                rv = super().main(*args, **kwargs)
            except click.exceptions.Exit as exc:
                code = exc.exit_code
            except click.ClickException as exc:
                exc.show()
                code = 1
            except click.Abort:
                click.echo("aborted", err=True)
                code = 1
            except SystemExit as exc:
                code = exc.code
            else:
                code = rv if isinstance(rv, int) else 0
        except KeyboardInterrupt:  # outside a command's own handling (parsing, its exit)
            if _Group.as_program:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo("interrupted", err=True)
            code = 130
        if _Group.as_program:  # the outcome is decided: a Ctrl-C now must not turn it into a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="specql")
def main() -> None:
    """Turn entity YAML batch_operations into PL/pgSQL migrations, tests and runs."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="Diagnostics as text lines or as a JSON list.")
@_guard
def validate(paths: tuple[str, ...], fmt: str) -> None:
    """Check entity files (or folders of *.yaml) and report every problem as file:line:col."""
    from .generate import load_project

    project = load_project(list(paths))
    if fmt == "json":
        _report(project.warnings, "json")
    else:
        _report(project.warnings)
        ops = sum(len(e.operations) for e in project.entities)
        click.echo(f"ok: {len(project.entities)} entities, {ops} operations")


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--output", "out_dir", default="generated", show_default=True,
              help="Folder to write into (migrations/ for SQL, tests/ for tests).")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the output folder is stale.")
@_guard
def generate(paths: tuple[str, ...], out_dir: str, check: bool) -> None:
    """Generate SQL migrations from entity files.

    `specql generate tests PATH...` writes pytest modules for each operation instead.
    """
    from . import generate as pipeline

    paths_list = list(paths)
    tests = bool(paths_list and paths_list[0] == "tests" and len(paths_list) > 1)
    sources = paths_list[1:] if tests else paths_list
    project = pipeline.load_project(sources)
    if tests:
        from .testgen import generate_tests

        result = generate_tests(project, out_dir, check=check)
    else:
        result = pipeline.generate(project, out_dir, check=check)
    _report(result.warnings)
    if check:
        if result.stale:
            for name in result.stale:
                click.echo(f"stale: {name}", err=True)
            click.echo(f"{out_dir} is stale: run `specql generate {' '.join(paths)} -o {out_dir}`", err=True)
            sys.exit(1)
        click.echo(f"{out_dir} is up to date ({len(result.files)} files)")
        return
    for path in result.changed:
        click.echo(f"wrote {path}")
    for path in result.removed:
        click.echo(f"removed {path} (not generated any more)")
    unchanged = len(result.written) - len(result.changed)
    click.echo(f"{len(result.changed)} written, {len(result.removed)} removed, {unchanged} unchanged")


@main.group()
def test() -> None:
    """Run the generated tests of entity files."""


@test.command("run")
@click.argument("paths", nargs=-1, required=True)
@click.option("--database-url", help="Server to create the throwaway database on "
              "(default: SPECQL_DATABASE_URL, then DATABASE_URL, else an embedded PostgreSQL).")
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Also write a JUnit XML report here.")
@click.option("-k", "keyword", help="Only tests matching this pytest -k expression.")
@click.option("-v", "--verbose", is_flag=True, help="Show pytest's output.")
@_guard
def test_run(paths: tuple[str, ...], database_url: str | None, junit_xml: str | None, keyword: str | None,
             verbose: bool) -> None:
    """Generate into a temporary folder, apply to a throwaway database, lint, run the tests."""
    from .database import DatabaseError, resolve_database_url
    from .generate import load_project
    from .testrun import run

    project = load_project(list(paths))  # invalid specs fail here, with their diagnostics
    _report(project.warnings)
    try:
        code = run(project, database_url=resolve_database_url(database_url), junit_xml=junit_xml,
                   keyword=keyword, echo=click.echo, verbose=verbose)
    except DatabaseError as exc:
        click.echo(f"specql: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.command()
def schema() -> None:
    """Print the JSON Schema of entity files."""
    from .validate import entity_schema

    click.echo(json.dumps(entity_schema(), indent=2))


@main.command()
@click.argument("directory", default="generated", required=False)
@click.option("--database-url", envvar=None, help="Target database (default: SPECQL_DATABASE_URL, then DATABASE_URL).")
@click.option("--status", is_flag=True, help="List applied, pending and changed migrations; apply nothing.")
@click.option("--dry-run", is_flag=True, help="Print what would be applied; apply nothing.")
@click.option("--lock-wait", type=click.FloatRange(min=0), show_default="60",
              envvar="SPECQL_LOCK_WAIT", metavar="SECONDS",
              help="Give up (exit 1, nothing half applied) when the migrate lock or a lock a file needs "
                   "is not obtained within this time; names the session holding it [env SPECQL_LOCK_WAIT].")
@click.option("--lock-timeout", type=click.FloatRange(min=0, min_open=True), show_default="3",
              envvar="SPECQL_LOCK_TIMEOUT", metavar="SECONDS",
              help="Longest a file's DDL waits for a table lock before its transaction is rolled back "
                   "and retried with backoff, so readers never queue long behind it [env SPECQL_LOCK_TIMEOUT].")
@_guard
def migrate(directory: str, database_url: str | None, status: bool, dry_run: bool, lock_wait: float | None,
            lock_timeout: float | None) -> None:
    """Apply DIRECTORY/migrations/*.sql in name order, with a ledger, under an advisory lock.

    SIGTERM and Ctrl-C roll the current file back and exit 143 / 130.
    """
    from .migrate import migrate as run

    url = _database_url(database_url)
    waits = {k: v for k, v in (("lock_wait", lock_wait), ("lock_timeout", lock_timeout)) if v is not None}
    sys.exit(run(directory, url, status=status, dry_run=dry_run, echo=click.echo, **waits))


@main.command("run")
@click.argument("operation")
@click.argument("paths", nargs=-1)
@click.option("--database-url", help="Target database (default: SPECQL_DATABASE_URL, then DATABASE_URL).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter: NAME=VALUE, or NAME=@FILE (arrays: JSON or one value a line; jsonb: JSON).")
@click.option("--confirm", is_flag=True, help="Pass confirm => true (operations with requires_confirmation).")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Override the file's batch_size for this run.")
@click.option("--resume", metavar="OPERATION_ID", help="Resume a commit_per_batch run from its last committed batch (a parallel run: with its workers).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel workers (operations with parallel: true).")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), help="CSV file (data_source: csv_file).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False),
              help="A large jsonb data_source: a JSON array or JSON lines file, staged with COPY.")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="Write the rejected records here (CSV with a reason column; --json: JSON lines).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="The result as a table, or as one JSON object.")
@_guard
def run_operation(operation: str, paths: tuple[str, ...], database_url: str | None, params: tuple[str, ...],
                  confirm: bool, batch_size: int | None, resume: str | None, workers: int, csv_file: str | None,
                  json_file: str | None, rejects: str | None, fmt: str) -> None:
    """Run OPERATION (looked up in PATH..., default entities/) with a live progress bar.

    Exit 0 when the run ends `completed`, 1 for any other status or a refused run.
    Ctrl-C stops it after the current batch (status `cancelled`).
    """
    from .generate import load_project
    from .launch import Request, check, launch, resolve
    from .progress import LiveBar
    from .run import RunError, find_operation

    url = _database_url(database_url)
    request = Request(list(params), confirm=confirm, batch_size=batch_size, resume=resume, workers=workers,
                      csv_file=csv_file, json_file=json_file, rejects=rejects)
    with _sigint_ignored_from() as run_ended:
        try:
            project = load_project(list(paths) or ["entities/"])
            op = find_operation(project, operation)
            check(op, request)  # refused before the progress bar appears
            said = resolve(url, op, request)  # --resume of a parallel run: its workers take it up
            if said:
                click.echo(f"specql run: {said}", err=True)
            with LiveBar(op.name, enabled=fmt == "text") as bar:
                result = launch(url, op, request, on_progress=bar.update, on_notice=bar.notice)
                run_ended()  # a Ctrl-C now changes nothing: the result is printed, its status the exit code
        except RunError as exc:
            click.echo(f"specql run: {exc}", err=True)
            sys.exit(1)
        _show_run(op, request, result, fmt)


def _show_run(op, request, result: dict, fmt: str) -> None:
    from .progress import show_result

    abandoned = result.pop("load_abandoned", False)  # --csv: a load that cannot be resumed, removed
    show_result({k: v for k, v in result.items() if k != "workers" or fmt == "json"}, fmt)
    if request.parallel and fmt == "text":
        from .workers import worker_lines
        for line in worker_lines(result):
            click.echo(line, err=True)
    if result.get("status") == "cancelled" and op.is_procedure and not abandoned:
        click.echo(f"cancelled: resume with `specql run {op.name} --resume {result['operation_id']}` "
                   f"and the same parameters", err=True)
    sys.exit(0 if result.get("status") == "completed" else 1)


@contextlib.contextmanager
def _sigint_ignored_from():
    """Yields a function that makes Ctrl-C change nothing from when it is called (a run's
    outcome is decided) to the end of the block. As the program it stays ignored to the exit
    (_Group.main); in-process (tests) the previous handler comes back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        if not _Group.as_program and previous is not None:
            signal.signal(signal.SIGINT, previous)


@main.command("plan")
@click.argument("operation")
@click.argument("paths", nargs=-1)
@click.option("--database-url", help="Target database (default: SPECQL_DATABASE_URL, then DATABASE_URL).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter, as `specql run` takes it: NAME=VALUE or NAME=@FILE.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Plan with this batch_size instead of the file's.")
@click.option("--sample-batches", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Batches the rolled-back sample run times.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="A report, or one JSON object.")
@_guard
def plan_operation_cmd(operation: str, paths: tuple[str, ...], database_url: str | None, params: tuple[str, ...],
                       batch_size: int | None, sample_batches: int, fmt: str) -> None:
    """Show what running OPERATION would do, changing nothing: the batch statements' plans
    (index warnings), the records it would touch, a rolled-back sample and an estimate."""
    from .explain import plan_operation, render_json, render_text
    from .generate import load_project
    from .run import RunError, bind_params, find_operation

    url = _database_url(database_url)
    try:
        project = load_project(list(paths) or ["entities/"])
        op = find_operation(project, operation)
        report = plan_operation(url, op, bind_params(op, list(params)), batch_size=batch_size,
                                sample_batches=sample_batches)
    except RunError as exc:
        click.echo(f"specql plan: {exc}", err=True)
        sys.exit(1)
    click.echo(render_json(report) if fmt == "json" else render_text(report))


@main.command("status")
@click.option("--database-url", help="Database to read (default: SPECQL_DATABASE_URL, then DATABASE_URL).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="A table, or a JSON list of runs.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many of the most recent runs.")
@click.option("--operation", metavar="NAME", help="Only the runs of this operation.")
@_guard
def status(database_url: str | None, fmt: str, limit: int, operation: str | None) -> None:
    """List recent runs: operation, state (running, abandoned, completed...), progress, rate, ETA,
    errors, started, last heartbeat.

    A run whose backend is gone (crashed, terminated, statement cancelled) shows `abandoned`.
    """
    from .status import StatusError, recent_runs, render_json, render_table

    url = _database_url(database_url)
    if operation is not None:
        try:
            operation.encode("utf-8")
        except UnicodeEncodeError:
            raise click.BadParameter("not valid UTF-8", param_hint="'--operation'") from None
    try:
        runs = recent_runs(url, limit=limit, operation=operation)
    except StatusError as exc:
        click.echo(f"specql status: {exc}", err=True)
        sys.exit(1)
    if fmt == "json":
        click.echo(render_json(runs))
    else:
        render_table(runs)


if __name__ == "__main__":  # pragma: no cover
    main()
