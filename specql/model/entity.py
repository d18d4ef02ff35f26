"""Entities and their columns: the tables operations work on (SPEC §2).

An entity is checked on its own first (names, field types, the primary key); defaults and
references are resolved once every entity is known, since a reference names another one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..diagnostics import Diagnostic, did_you_mean
from ..loader import Document
from ..sqlnames import SQL_TYPES, qi, qname
from .project_sql import read_sql_files
from .names import MAX_COLUMNS, check_identifier, display_name
from .values import looks_like_sql

# Every table has these; CREATE TABLE refuses a column of the same name.
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})

if TYPE_CHECKING:
    from .operation import Operation


@dataclass
class Column:
    name: str
    type: str  # specql type name
    sql_type: str
    nullable: bool = True
    default_sql: str | None = None
    unique: bool = False
    references_sql: str | None = None
    primary_key: bool = False

    @property
    def ident(self) -> str:
        return qi(self.name)


@dataclass
class Entity:
    name: str
    schema: str
    table: str
    primary_key: Column
    columns: dict[str, Column]
    manage_table: bool
    description: str | None
    source_path: str
    source_name: str = ""
    depends_on: set[str] = field(default_factory=set)
    operations: list["Operation"] = field(default_factory=list)
    extra_tables: list = field(default_factory=list)  # policy.ExtraTable: custom log/metrics tables
    project_sql: list = field(default_factory=list)  # project_sql.ProjectSql: `sql_files`, in order
    soft_delete: bool = False  # soft_delete: true (issue 14): deleted_at, deleted_by, deletion_reason

    @property
    def deletion_stats_ident(self) -> str:
        """The generated `<entity>_deletion_stats()` of a soft-delete entity."""
        return qname(self.schema, f"{self.name}_deletion_stats")

    @property
    def ident(self) -> str:
        return qname(self.schema, self.table)

    @property
    def soft_deleted_index(self) -> str:
        """The name of a soft-delete entity's index of its soft-deleted rows' keys: the table's
        name and a suffix, cut to PostgreSQL's 63 bytes with a hash of the whole name (two long
        names that share their start must not share an index: IF NOT EXISTS would skip one)."""
        name = f"{self.table}_soft_deleted_idx"
        if len(name.encode("utf-8")) > 63:
            digest = hashlib.sha1(self.table.encode("utf-8")).hexdigest()[:8]
            name = f"{self.table.encode('utf-8')[:44].decode('utf-8', 'ignore')}_{digest}_sd_idx"
        return qi(name)

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Project:
    entities: list[Entity]
    warnings: list[Diagnostic]


def build_entity(doc: Document, problems: list[Diagnostic]) -> Entity | None:
    data = doc.data
    n = len(problems)
    name = data["name"]
    check_identifier(doc, ("name",), name, "entity name", problems)
    schema = data.get("schema", "public")
    table = data.get("table", name)
    check_identifier(doc, ("schema",), schema, "schema name", problems)
    check_identifier(doc, ("table",), table, "table name", problems)
    if schema == "specql":
        problems.append(doc.diag(("schema",), "schema 'specql' is reserved for specql's runtime tables"))
    columns: dict[str, Column] = {}
    if len(data["fields"]) > MAX_COLUMNS:
        problems.append(doc.diag(("fields",), f"{len(data['fields'])} fields: PostgreSQL allows at most "
                                              f"{MAX_COLUMNS} columns in a table", key=True))
    for fname, fspec in data["fields"].items():
        fpath = ("fields", fname)
        check_identifier(doc, fpath, fname, "field name", problems, key=True)
        if fname in SYSTEM_COLUMNS:
            problems.append(doc.diag(fpath, f"field name '{fname}' is a system column of every PostgreSQL "
                                            f"table; choose another", key=True))
        spec = {"type": fspec} if isinstance(fspec, str) else fspec
        columns[fname] = Column(
            name=fname, type=spec["type"], sql_type=SQL_TYPES[spec["type"]],
            nullable=spec.get("nullable", True), unique=spec.get("unique", False),
        )
    if data.get("soft_delete"):
        _soft_delete_columns(doc, columns, problems)
    pk_name = data.get("primary_key", "id")
    pk = columns.get(pk_name)
    if pk is None:
        where = ("primary_key",) if "primary_key" in data else ("fields",)
        problems.append(doc.diag(where, f"primary key '{pk_name}' is not one of the fields"
                                        f"{did_you_mean(pk_name, columns)}"))
    elif pk.type in ("jsonb", "boolean"):
        problems.append(doc.diag(("fields", pk_name), f"a {pk.type} field cannot be the primary key"))
    else:
        pk.primary_key = True
        pk.nullable = False
    if len(problems) > n:
        return None
    return Entity(name=name, schema=schema, table=table, primary_key=pk, columns=columns,
                  manage_table=data.get("manage_table", True), description=data.get("description"),
                  source_path=doc.path, source_name=display_name(doc.source or doc.path),
                  soft_delete=bool(data.get("soft_delete")), project_sql=read_sql_files(doc, problems))


# soft_delete: true adds these columns (SPEC §10), unless the entity declares them with these types.
SOFT_DELETE_COLUMNS = (("deleted_at", "timestamp"), ("deleted_by", "string"), ("deletion_reason", "string"))


def _soft_delete_columns(doc: Document, columns: dict[str, Column], problems: list[Diagnostic]) -> None:
    for name, type_ in SOFT_DELETE_COLUMNS:
        declared = columns.get(name)
        if declared is None:
            columns[name] = Column(name=name, type=type_, sql_type=SQL_TYPES[type_])
        elif declared.sql_type != SQL_TYPES[type_]:
            problems.append(doc.diag(("fields", name), f"soft_delete: true needs '{name}' to be {type_} "
                                                       f"({SQL_TYPES[type_]}), not {declared.type}", key=True))


def resolve_field_details(doc: Document, entity: Entity, registry: dict[str, Entity],
                          problems: list[Diagnostic]) -> None:
    """Defaults and references need the column types and the other entities."""
    from .context import Context  # a default is a value like any other, read in an operation's context

    for fname, fspec in doc.data["fields"].items():
        if not isinstance(fspec, dict):
            continue
        column = entity.columns[fname]
        if "default" in fspec:
            raw = fspec["default"]
            ctx = Context(doc, ("fields", fname), {"operation": entity.name}, entity, entity, problems, [])
            if isinstance(raw, str) and raw.startswith(":"):
                problems.append(doc.diag(("fields", fname, "default"), "a default cannot use a parameter"))
            elif _reads_the_database(raw):
                problems.append(doc.diag(("fields", fname, "default"), "a default cannot read columns or tables "
                                         "(PostgreSQL evaluates it on its own, per new row): use a constant or a "
                                         "function call such as now()"))
            else:
                sql = ctx.value_sql(raw, column, ("fields", fname, "default"))
                if ctx.scope.order or ctx.scope.record_alias:
                    problems.append(doc.diag(("fields", fname, "default"), "a default cannot use a parameter"))
                elif sql is not None and (isinstance(raw, dict) and "sql" in raw
                                          or isinstance(raw, str) and looks_like_sql(raw)):
                    # An expression in parentheses: DEFAULT takes only a restricted expression
                    # (`DEFAULT x IS NOT NULL` does not parse), and a CASE reads it as one term.
                    column.default_sql = f"({sql})"
                else:
                    column.default_sql = sql
        if "references" in fspec:
            _resolve_reference(doc, entity, fname, fspec["references"], registry, problems)


def _reads_the_database(raw) -> bool:
    """Whether a default written as SQL names a column or holds a subquery, which PostgreSQL
    refuses in DEFAULT (and which would make the entity's migration read other tables)."""
    from .. import sqlfragment as sf

    text = raw.get("sql") if isinstance(raw, dict) else raw if isinstance(raw, str) and looks_like_sql(raw) else None
    if not isinstance(text, str):
        return False
    try:
        frag = sf.parse_fragment(text)
    except sf.FragmentError:
        return False  # reported where the value is read
    return bool(frag.columns or frag.qualified) or any(
        isinstance(node, sf.ast.SubLink) for node in sf._walk(frag.expr))


def _resolve_reference(doc: Document, entity: Entity, fname: str, ref: str, registry: dict[str, Entity],
                       problems: list[Diagnostic]) -> None:
    column = entity.columns[fname]
    target_name, _, target_col = ref.partition(".")
    target = registry.get(target_name)
    if target is None:
        problems.append(doc.diag(("fields", fname, "references"),
                                 f"unknown entity '{target_name}'{did_you_mean(target_name, registry)}"))
        return
    ref_col = target.columns.get(target_col) if target_col else target.primary_key
    if ref_col is None:
        problems.append(doc.diag(("fields", fname, "references"), f"unknown column '{target_col}' of "
                                 f"{target.name}{did_you_mean(target_col, target.columns)}"))
        return
    if ref_col.sql_type != column.sql_type:
        problems.append(doc.diag(("fields", fname, "references"), f"'{fname}' is {column.type} but "
                                 f"{target.name}.{ref_col.name} is {ref_col.type}"))
        return
    column.references_sql = f"{target.ident} ({ref_col.ident})"
    if target is not entity:
        entity.depends_on.add(target.key)
