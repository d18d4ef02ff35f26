"""The pipeline, top to bottom: load -> validate -> model -> plan -> write.

A project is loaded (and validated) once; `generate`, `generate_tests` and `specql test run`
all take the loaded Project, so one command never parses or validates a file twice. They
still accept a list of paths for callers that have not loaded one (tests, bench/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import Diagnostic, SpecError
from .loader import collect_files, load_file, source_names
from .model import Project, build_project
from .plan import PlannedFile, plan
from .writer import FolderResult, sync

MIGRATIONS = "migrations"
MIGRATION_PATTERNS = ("*.sql",)  # every .sql file in migrations/ is ours (see writer.py)


@dataclass
class GenerateResult:
    files: list[PlannedFile]
    warnings: list[Diagnostic] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # every planned file's path
    changed: list[Path] = field(default_factory=list)  # files whose bytes were written now
    removed: list[Path] = field(default_factory=list)  # orphans removed
    stale: list[str] = field(default_factory=list)  # with check=True: what differs, is missing or orphaned

    @classmethod
    def of(cls, files: list[PlannedFile], warnings: list[Diagnostic], folder: FolderResult) -> "GenerateResult":
        return cls(files=files, warnings=warnings, written=folder.written, changed=folder.changed,
                   removed=folder.removed, stale=folder.problems())


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


def as_project(project_or_paths: Project | list[str]) -> Project:
    """The loaded project: given one, itself; given paths, loaded from them."""
    if isinstance(project_or_paths, Project):
        return project_or_paths
    return load_project(list(project_or_paths))


def display_path(path: Path) -> str:
    """The path as people read it: relative to the working folder when inside it, with '/'."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def generate(project: Project | list[str], out_dir: str | Path, *, check: bool = False) -> GenerateResult:
    """Generate migrations into out_dir/migrations. With check, write nothing and report staleness."""
    project = as_project(project)
    planned = plan(project)
    folder = sync(Path(out_dir) / MIGRATIONS, {f.name: f.content for f in planned}, MIGRATION_PATTERNS,
                  check=check)
    return GenerateResult.of(planned, project.warnings, folder)

