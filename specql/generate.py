"""The pipeline, top to bottom: load -> validate -> model -> plan -> write."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import Diagnostic, SpecError
from .loader import collect_files, load_file, source_names
from .model import Project, build_project
from .plan import PlannedFile, plan

MIGRATIONS = "migrations"


@dataclass
class GenerateResult:
    files: list[PlannedFile]
    warnings: list[Diagnostic] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # with check=True: what differs


def load_project(paths: list[str]) -> Project:
    """Load and check every entity file under `paths`; raises SpecError with all problems."""
    files, problems = collect_files(paths)
    sources = source_names(paths)
    docs = []
    for path in files:
        try:
            docs.append(load_file(path, display_path(path), sources.get(path.resolve())))
        except SpecError as exc:
            problems.extend(exc.diagnostics)
    try:
        project = build_project(docs) if docs or not problems else None
    except SpecError as exc:
        problems.extend(exc.diagnostics)
        project = None
    if problems or project is None:
        raise SpecError(problems or [Diagnostic(str(paths[0]) if paths else ".", 1, 1, "no entity files")])
    return project


def display_path(path: Path) -> str:
    """The path as people read it: relative to the working folder when inside it, with '/'."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def generate(paths: list[str], out_dir: str | Path, *, check: bool = False) -> GenerateResult:
    """Generate migrations into out_dir/migrations. With check, write nothing and report staleness."""
    project = load_project(paths)
    planned = plan(project)
    result = GenerateResult(files=planned, warnings=project.warnings)
    target = Path(out_dir) / MIGRATIONS
    wanted = {f.name: f.content for f in planned}
    existing = {p.name: p for p in target.glob("*.sql")} if target.is_dir() else {}
    if check:
        for name, content in wanted.items():
            if name not in existing or existing[name].read_text("utf-8") != content:
                result.stale.append(name)
        result.stale.extend(f"{name} (not generated any more)" for name in existing if name not in wanted)
        return result
    target.mkdir(parents=True, exist_ok=True)
    for name, content in wanted.items():
        path = target / name
        if not path.exists() or path.read_text("utf-8") != content:
            _write_atomic(path, content)
        result.written.append(path)
    for name, path in existing.items():
        if name not in wanted:
            path.unlink()  # a spec change renamed it; the old name is in the ledger if applied
    return result


def _write_atomic(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".specql-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(content)
    os.replace(tmp, path)
