"""Apply generated SQL to a fresh database and check it did only what the entity asked.

Why `psql -f`: it is how the README says migrations can be applied, and it is the
strictest reader: besides SQL, a line that a newline in a name turned into `\\! cmd`
would run a shell command. Before applying, a canary table `public.fuzz_canary` is
created; afterwards it must still hold its row, no shell-command marker file may exist,
and every new catalog row (pg_namespace, pg_class, pg_proc, pg_type) must belong to a
schema, table or routine the entity declares, as specql's own model reads them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from specql import database

from .payloads import PWNED_MARKER

PSQL_CANDIDATES = ["/usr/lib/postgresql/15/bin/psql", shutil.which("psql") or ""]
APPLY_TIMEOUT = 60

SNAPSHOT = """
SELECT 'namespace', oid, nspname, nspname, '', 0::oid FROM pg_namespace
UNION ALL
SELECT 'class', c.oid, n.nspname, c.relname, c.relkind::text,
       COALESCE((SELECT indrelid FROM pg_index WHERE indexrelid = c.oid),
                (SELECT refobjid FROM pg_depend WHERE objid = c.oid AND classid = 'pg_class'::regclass
                 AND refclassid = 'pg_class'::regclass AND deptype IN ('a', 'i') LIMIT 1), 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT 'proc', p.oid, n.nspname, p.proname, p.prokind::text, 0 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
UNION ALL
SELECT 'type', t.oid, n.nspname, t.typname, t.typtype::text, CASE WHEN t.typrelid <> 0 THEN t.typrelid ELSE t.typelem END
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
"""


def psql_path() -> str | None:
    for candidate in PSQL_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unquote_qualified(text: str) -> tuple[str, str]:
    """`"a""b".c` -> ('a"b', 'c'): the names that specql's quoting produced."""
    parts, i = [], 0
    while i < len(text):
        if text[i] == '"':
            j, name = i + 1, []
            while j < len(text):
                if text[j] == '"' and text[j + 1:j + 2] == '"':
                    name.append('"')
                    j += 2
                elif text[j] == '"':
                    break
                else:
                    name.append(text[j])
                    j += 1
            parts.append("".join(name))
            i = j + 2  # past the quote and the dot
        else:
            j = text.find(".", i)
            j = len(text) if j < 0 else j
            parts.append(text[i:j])
            i = j + 1
    return (parts[0], parts[-1]) if len(parts) >= 2 else ("", parts[0] if parts else "")


def _created_by(text: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(tables, routines) the entity's own SQL (`sql_files`) creates, read by PostgreSQL's
    parser; an unqualified name lands in public (the migration's search_path)."""
    import pglast

    def name_of(parts) -> tuple[str, str]:
        names = [p.sval for p in parts]
        return (names[-2] if len(names) > 1 else "public", names[-1])

    tables, routines = set(), set()
    for raw in pglast.parse_sql(text):
        stmt = raw.stmt
        kind = type(stmt).__name__
        if kind == "CreateFunctionStmt":
            routines.add(name_of(stmt.funcname))
        elif kind in ("CreateStmt", "ViewStmt", "CreateSeqStmt", "CreateTableAsStmt"):
            rel = stmt.into.rel if kind == "CreateTableAsStmt" else (
                stmt.view if kind == "ViewStmt" else (stmt.sequence if kind == "CreateSeqStmt" else stmt.relation))
            tables.add((rel.schemaname or "public", rel.relname))
    return tables, routines


def declared(entity_file: Path) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """(schemas, tables, routines) the entity asks for, read by specql's own model."""
    from specql.generate import load_project

    project = load_project([str(entity_file)])
    schemas, tables, routines = {"specql"}, set(), set()
    for e in project.entities:
        schemas.add(e.schema)
        tables.add((e.schema, e.table))
        for extra in e.extra_tables:
            schemas.add(extra.schema)
            tables.add((extra.schema, extra.table))
        for sql in e.project_sql:
            made_tables, made_routines = _created_by(sql.text)
            tables.update(made_tables)
            routines.update(made_routines)
        if e.soft_delete:
            routines.add((e.schema, f"{e.name}_deletion_stats"))
        for op in e.operations:
            schemas.add(op.schema)
            made_tables, made_routines = op.created_objects
            tables.update(made_tables)
            routines.update(made_routines)
    return schemas, tables, routines


def _snapshot(url: str) -> dict[int, tuple]:
    with database.connect(url, autocommit=True) as conn:
        return {row[1]: row for row in conn.execute(SNAPSHOT).fetchall()}


def unexpected_objects(before: dict, after: dict, decl) -> list[str]:
    schemas, tables, routines = decl
    allowed: set[int] = set(before)
    new = [row for oid, row in after.items() if oid not in before]
    # Tables first, so that their indexes, sequences and row types can refer to them.
    order = {"namespace": 0, "class": 1, "proc": 2, "type": 3}
    bad = []
    for kind, oid, nsp, name, sub, owner in sorted(new, key=lambda r: (order[r[0]], r[4] not in "rpvmfc", r[1])):
        ok = False
        if kind == "namespace":
            ok = name in schemas
        elif nsp == "pg_toast":
            ok = True
        elif kind == "class":
            ok = (nsp, name) in tables if sub in ("r", "p", "v", "m", "f") else owner in allowed
        elif kind == "proc":
            ok = (nsp, name) in routines
        elif kind == "type":
            ok = owner in allowed
        if ok:
            allowed.add(oid)
        else:
            bad.append(f"{kind} {nsp}.{name} ({sub})")
    return bad


class Applier:
    """Applies one case's migrations to a throwaway database on `server_url`."""

    def __init__(self, server_url: str):
        self.server_url = server_url
        self.psql = psql_path()

    def apply(self, entity_file: Path, sql_files: list[str]) -> list[tuple[str, str]]:
        folder = entity_file.parent
        marker = folder / PWNED_MARKER
        marker.unlink(missing_ok=True)
        try:
            decl = declared(entity_file)
        except Exception as exc:  # noqa: BLE001 - generate just accepted this file
            return [("model_rejects_generated", f"{type(exc).__name__}: {str(exc)[:300]}")]
        with database.throwaway_database(self.server_url, prefix="specql_fuzz") as url:
            with database.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE public.fuzz_canary (x int); INSERT INTO public.fuzz_canary VALUES (1)")
            runtime = [f for f in sql_files if "specql_runtime" in Path(f).name]
            rest = [f for f in sql_files if f not in runtime]
            failure = self._run_files(url, runtime, folder)
            if failure:
                return [failure]
            before = _snapshot(url)
            failure = self._run_files(url, rest, folder)
            out = [failure] if failure else []
            with database.connect(url, autocommit=True) as conn:
                alive = conn.execute("SELECT to_regclass('public.fuzz_canary') IS NOT NULL").fetchone()[0]
                rows = conn.execute("SELECT count(*) FROM public.fuzz_canary").fetchone()[0] if alive else 0
            if not alive or rows != 1:
                out.append(("injected_statement", f"canary {'gone' if not alive else f'has {rows} rows'}"))
            if marker.exists():
                out.append(("injected_statement", "a psql \\! command ran"))
            bad = unexpected_objects(before, _snapshot(url), decl)
            if bad:
                out.append(("injected_statement", f"objects the entity did not declare: {', '.join(bad[:5])}"))
            return out

    def _run_files(self, url: str, files: list[str], cwd: Path) -> tuple[str, str] | None:
        for path in files:
            if self.psql:
                cmd = [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", path]
                try:
                    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace",
                                          timeout=APPLY_TIMEOUT)
                except subprocess.TimeoutExpired:
                    return ("apply_failure", f"{Path(path).name}: psql did not finish in {APPLY_TIMEOUT} s")
                if proc.returncode != 0:
                    return ("apply_failure", f"{Path(path).name}: {proc.stderr.strip()[:300]}")
            else:
                try:
                    with database.connect(url, autocommit=True) as conn:
                        conn.execute(Path(path).read_text("utf-8"))
                except Exception as exc:  # noqa: BLE001
                    return ("apply_failure", f"{Path(path).name}: {type(exc).__name__}: {str(exc)[:300]}")
        return None
