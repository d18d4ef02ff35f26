"""Plan the migration files: which files, in which order, under which names."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .diagnostics import Diagnostic, SpecError
from .model import Entity, Project
from .render import render_entity, render_runtime


@dataclass(frozen=True)
class PlannedFile:
    name: str  # e.g. 0002_public.user.1a2b3c4d.sql
    content: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "entity"


def _file_name(index: int, stem: str, content: str) -> str:
    # The content hash in the name makes a changed spec a new migration: `specql migrate`
    # applies it, while an applied file edited in place is refused (checksum mismatch).
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:8]
    return f"{index:04d}_{_slug(stem)}.{digest}.sql"


def dependency_order(entities: list[Entity]) -> list[Entity]:
    """Entities sorted so each comes after those it references; ties by schema.table."""
    by_key = {e.key: e for e in entities}
    done: list[Entity] = []
    state: dict[str, str] = {}

    def visit(entity: Entity, chain: list[str]) -> None:
        if state.get(entity.key) == "done":
            return
        if state.get(entity.key) == "visiting":
            cycle = " -> ".join(chain + [entity.key])
            raise SpecError([Diagnostic(entity.source_path, 1, 1, f"entities reference each other in a cycle: {cycle}")])
        state[entity.key] = "visiting"
        for dep in sorted(entity.depends_on):
            if dep in by_key:
                visit(by_key[dep], chain + [entity.key])
        state[entity.key] = "done"
        done.append(entity)

    for entity in sorted(entities, key=lambda e: e.key):
        visit(entity, [])
    return done


def plan(project: Project) -> list[PlannedFile]:
    files = []
    runtime = render_runtime()
    files.append(PlannedFile(_file_name(1, "specql_runtime", runtime), runtime))
    for i, entity in enumerate(dependency_order(project.entities), start=2):
        content = render_entity(entity)
        files.append(PlannedFile(_file_name(i, entity.key, content), content))
    return files
