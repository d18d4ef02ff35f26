"""Checks of a database against a project before its generated tests run.

An entity may call functions that specql does not create (the seed's
`CURRENT_USER_HAS_PERMISSION(...)`): validation cannot know whether the database has them,
and without this check every generated test of such an operation fails with the same
"function does not exist", none of them saying why. Here each missing function is named
once, at the place the entity file calls it.
"""

from __future__ import annotations

from .model import Project

# Resolved the way the routine resolves it: pg_catalog first, then the schemas its
# search_path pins (the operation's and its target's).
_EXISTS = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proname = %(name)s AND n.nspname = ANY(%(schemas)s)
)
"""


def missing_functions(conn, project: Project) -> list[str]:
    """One line per function the project's SQL calls that the database lacks:
    `file:line:col: error: function name() does not exist ...`, in the order the files call them."""
    found: dict[str, str] = {}
    for entity in project.entities:
        for op in entity.operations:
            schemas = ["pg_catalog", op.schema, op.target.schema]
            for name, location in op.functions:
                if name in found:
                    continue
                schema, _, bare = name.rpartition(".")
                row = conn.execute(_EXISTS, {"name": bare, "schemas": [schema] if schema else schemas}).fetchone()
                found[name] = "" if row[0] else (
                    f"{location}: error: function {name}() does not exist in the database the tests run on "
                    f"(operation {op.name} calls it); create it before the specql migrations, e.g. in a "
                    f"migration of your own, or the routine fails at every call")
    return [line for line in found.values() if line]
