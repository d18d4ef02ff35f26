"""Plan the migration files: which files, under which names (whose order is the apply order).

A name is `LLLL_<schema.table>.<hash8>.sql`:

- LLLL is the entity's dependency level, not its position in a list: 0000 for the
  runtime, then 1 + the level of the deepest entity it references (1 for an entity that
  references none). Name order is therefore a valid apply order (an entity sorts after
  everything it references, and entities of one level never reference each other), and
  adding an unrelated entity renames no other file, as a global position would.
- the hash is over the file's content, so a changed spec is a new file that
  `specql migrate` applies, while an applied file edited in place is refused. The specql
  version is not in the content, so a version bump alone changes no file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .diagnostics import Diagnostic, SpecError
from .model import Entity, Project
from .render import render_entity, render_runtime

RUNTIME_STEM = "specql_runtime"


@dataclass(frozen=True)
class PlannedFile:
    name: str  # e.g. 0001_public.user.1a2b3c4d.sql
    content: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "entity"


def file_name(level: int, stem: str, content: str) -> str:
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:8]
    return f"{level:04d}_{_slug(stem)}.{digest}.sql"


def dependency_levels(entities: list[Entity]) -> dict[str, int]:
    """schema.table -> 1 + the level of the deepest entity it references (1 for none).

    References to tables outside the project do not count: they exist before any
    migration of ours. A cycle is a spec error naming the chain.
    """
    by_key = {e.key: e for e in entities}
    levels: dict[str, int] = {}
    visiting: set[str] = set()

    def level(entity: Entity, chain: list[str]) -> int:
        if entity.key in levels:
            return levels[entity.key]
        if entity.key in visiting:
            cycle = " -> ".join(chain + [entity.key])
            raise SpecError([Diagnostic(entity.source_path, 1, 1, f"entities reference each other in a cycle: {cycle}")])
        visiting.add(entity.key)
        deps = [by_key[d] for d in sorted(entity.depends_on) if d in by_key and d != entity.key]
        levels[entity.key] = 1 + max((level(d, chain + [entity.key]) for d in deps), default=0)
        visiting.discard(entity.key)
        return levels[entity.key]

    for entity in sorted(entities, key=lambda e: e.key):
        level(entity, [])
    return levels


def dependency_order(entities: list[Entity]) -> list[Entity]:
    """Entities sorted so each comes after those it references: by level, then schema.table."""
    levels = dependency_levels(entities)
    return sorted(entities, key=lambda e: (levels[e.key], _slug(e.key)))


def plan(project: Project) -> list[PlannedFile]:
    """The runtime, then one file per entity, in name order (= apply order)."""
    runtime = render_runtime()
    files = [PlannedFile(file_name(0, RUNTIME_STEM, runtime), runtime)]
    levels = dependency_levels(project.entities)
    for entity in project.entities:
        content = render_entity(entity)
        files.append(PlannedFile(file_name(levels[entity.key], entity.key, content), content))
    return sorted(files, key=lambda f: f.name)
