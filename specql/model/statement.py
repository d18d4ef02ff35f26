"""The statement an operation runs on each batch: its kind, target, condition, values, conflict
target, and the driver that cuts the work into batches.

Drivers (SPEC §4): `keys` slices an id array (`pk = ANY(:ids)`), `keyset` walks the primary
key of the rows a condition matches, `source` takes the elements of a jsonb array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast.enums import A_Expr_Kind

from .. import sqlfragment as sf
from ..diagnostics import did_you_mean
from .scope import Param
from .values import PARAM_REF, Assignment

INTEGER_KEY_MAX = {"integer": 2**31 - 1, "bigint": 2**63 - 1}
DATA_KEYS = {"update": "update_data", "insert": "insert_data", "upsert": "upsert_data",
             "soft_delete": "update_data"}
# Soft delete (issue 14, SPEC §10): operation types of an entity with soft_delete: true, each
# the statement kind it is built as (soft_delete and restore update, purge deletes).
SOFT_DELETE_TYPES = {"soft_delete": "update", "restore": "update", "purge": "delete"}


@dataclass
class Statement:
    operation_type: str  # update, delete, insert, upsert
    target: object  # entity.Entity
    assignments: list[Assignment]
    driver: str  # "keys" (id array), "keyset" (condition walk) or "source" (jsonb array)
    where_sql: str | None  # full condition, for counting; None means every row
    batch_where_sql: str | None  # condition applied to one batch (keys already restricted)
    key_param: Param | None
    source_param: Param | None
    conflict_columns: list = field(default_factory=list)
    csv: object | None = None  # csvsource.CsvSource of a data_source: csv_file import (driver "csv")
    # For generated tests: the condition with $1..$n for params (in `params` order).
    count_sql: str | None = None
    # A step of a multi-step operation (SPEC §8) walks an earlier step's output: its keys
    # (driver output_keys) or its records (driver output_records). model/steps.StepOutput.
    key_output: object = None
    source_output: object = None
    ignore_conflicts: bool = False  # insert: ON CONFLICT DO NOTHING, skipped rows counted (issue 14)
    hooked: bool = False  # hooks: a batch is always a list of keys (never a key range), so each is one statement
    skips_deleted: bool = False  # soft delete: an ordinary statement's filter deleted_at IS NULL (issue 14)

    @property
    def base_type(self) -> str:
        """The statement kind an operation type is built as: soft_delete and restore update,
        purge deletes; the others are their own."""
        return SOFT_DELETE_TYPES.get(self.operation_type, self.operation_type)

    @property
    def range_batches(self) -> bool:
        """Whether a condition walk may take a dense stretch of keys as one key range: an
        integer key is unique, so batch_size consecutive values hold at most batch_size rows."""
        return (self.driver == "keyset" and self.target.primary_key.sql_type in INTEGER_KEY_MAX
                and not self.hooked
                and self.operation_type != "select")  # a select step keeps the walk's listed keys

    @property
    def driver_template(self) -> str:
        """The file of templates/sql/drivers/ that writes this driver's pieces (the same macro set
        in each): a condition walk that may take key ranges has its own (key_ranges)."""
        return "key_ranges" if self.range_batches else self.driver

    @property
    def key_type(self) -> str:
        return self.target.primary_key.sql_type

    @property
    def generic_plans(self) -> bool:
        """A custom plan folds each argument into the plan as a constant, copying a large id array
        or jsonb data_source once per batch (quadratic in the input): those routines use generic plans."""
        return self.driver in ("keys", "source")

    @property
    def key_max(self) -> int:
        return INTEGER_KEY_MAX[self.target.primary_key.sql_type]

    @property
    def conflict_updates(self) -> list[Assignment]:
        """An upsert's assignments to columns outside the conflict target: what DO UPDATE sets."""
        return [a for a in self.assignments if a.column not in self.conflict_columns]

    @property
    def partial_updates(self) -> list[Assignment]:
        """An upsert's updated columns read from a record field: a record may leave the field out,
        and the existing row then keeps its value (the routine groups each batch's records by
        the fields they carry)."""
        if self.operation_type != "upsert":
            return []
        return [a for a in self.conflict_updates if a.kind == "record"]


class StatementReader:
    """Reads the statement keys of a pattern: data_source, where_condition, the values, the conflict target.

    Parameters are noted in the context's scope as they are met (their order is the routine's
    argument order); `finish` builds the Statement once the parameters have their types.
    """

    def __init__(self, ctx, op_type: str):
        self.ctx, self.op_type = ctx, op_type
        self.data_key = DATA_KEYS.get(op_type)
        self.source_name: str | None = None
        self.where_frag = None
        self.where_sql = self.batch_where_sql = None
        self.driver = "source" if op_type in ("insert", "upsert") else "keyset"
        self.key_param_name: str | None = None
        self.assignments: list[Assignment] = []
        self.conflict_columns: list = []
        self.csv = None  # csvsource.CsvSource when data_source: csv_file
        self.soft_filter: str | None = None  # soft delete: the deleted_at filter every statement adds
        self.soft_count_filter = None  # the same for count_sql, given the parameters' positions

    @property
    def csv_mapped(self) -> set[str]:
        return {m.column.name for m in self.csv.mapping} if self.csv is not None else set()

    def check_data_keys(self) -> None:
        ctx, spec, at = self.ctx, self.ctx.spec, self.ctx.at
        for key in DATA_KEYS.values():
            if key in spec and key != self.data_key:
                ctx.error(at(key), f"'{key}' does not apply to operation_type '{self.op_type}'", key=True)
        if "ignore_conflicts" in spec and self.op_type != "insert":
            ctx.error(at("ignore_conflicts"), f"ignore_conflicts applies to insert, not {self.op_type} "
                                              f"(an upsert's conflicts update the row)", key=True)
        if (self.data_key and self.data_key not in spec and self.op_type != "soft_delete"
                and spec.get("data_source") != "csv_file"):
            ctx.error(at("operation_type"), f"operation_type '{self.op_type}' needs '{self.data_key}'")

    def read_data_source(self) -> None:
        ctx, spec, at, op_type = self.ctx, self.ctx.spec, self.ctx.at, self.op_type
        if spec.get("data_source") == "csv_file":
            from .csvsource import STAGING_PARAM, read_csv_source
            self.driver = "csv"
            self.source_name = STAGING_PARAM
            ctx.scope.note(STAGING_PARAM, "uuid", at("data_source"), None)
            self.csv, self.assignments = read_csv_source(ctx)
        elif "data_source" in spec:
            m = PARAM_REF.match(spec["data_source"].strip())
            if not m:
                ctx.error(at("data_source"), "data_source must be a parameter such as :rows (a jsonb array "
                                             "of objects) or csv_file")
            elif op_type not in ("insert", "upsert"):
                ctx.error(at("data_source"), f"data_source applies to insert and upsert, not {op_type}")
            else:
                self.source_name = m.group(1)
                ctx.scope.note(self.source_name, "jsonb", at("data_source"), None)
        elif op_type in ("insert", "upsert"):
            ctx.error(at("operation_type"), f"operation_type '{op_type}' needs data_source: a jsonb array "
                                            f"parameter such as :rows")

    def read_where(self) -> None:
        """The condition, and the driver it implies: an id array when `pk = ANY(:ids)` is a conjunct."""
        ctx, spec = self.ctx, self.ctx.spec
        if "where_condition" not in spec:
            return
        wpath = ctx.at("where_condition")
        if self.op_type in ("insert", "upsert"):
            ctx.error(wpath, f"where_condition does not apply to {self.op_type}", key=True)
            return
        frag = ctx.parse(spec["where_condition"], wpath)
        if frag is None:
            return
        if frag.has_aggregate:
            ctx.error(wpath, f"aggregate function {frag.aggregate_name}() is not allowed in where_condition; "
                             f"use preconditions to check the whole table", offset=frag.aggregate_offset)
            return
        if not ctx.check_boolean(frag, wpath, "where_condition"):
            return
        self.where_frag = frag
        ctx.check_columns(frag, wpath)
        driver_ph = key_driver(frag, ctx.target.primary_key.name)
        self.where_sql = ctx.render_fragment(frag, wpath)
        if driver_ph is not None:
            self.driver, self.key_param_name = "keys", driver_ph.name
            self.batch_where_sql = ctx.render_fragment(frag, wpath, {driver_ph.number: "_keys"})
        else:
            self.batch_where_sql = self.where_sql

    def read_assignments(self) -> None:
        ctx, spec, at = self.ctx, self.ctx.spec, self.ctx.at
        cols = ctx.target.columns
        for column_name, raw in (spec.get(self.data_key) or {}).items() if self.data_key else ():
            vpath = at(self.data_key, column_name)
            column = cols.get(column_name)
            if column is None:
                ctx.error(vpath, f"unknown column '{column_name}' of {ctx.target.name}"
                                 f"{did_you_mean(column_name, cols)}", key=True)
                continue
            if self.op_type in ("update", "soft_delete") and column.primary_key:
                ctx.error(vpath, f"update_data cannot change the primary key '{column_name}'", key=True)
                continue
            if self.op_type == "soft_delete" and column_name == "deleted_at":
                ctx.error(vpath, "soft_delete sets deleted_at itself (to clock_timestamp())", key=True)
                continue
            assignment = ctx.assignment(raw, column, vpath)
            if assignment is not None and self.csv is not None and column_name in self.csv_mapped:
                ctx.error(vpath, f"column '{column_name}' is also in field_mapping", key=True)
            elif assignment is not None:
                self.assignments.append(assignment)
        scope = ctx.scope
        if scope.record_alias and not self.source_name and "data_source" not in spec:
            ctx.error(scope.record_alias_at, f":{scope.record_alias}.… refers to a data_source element, "
                                             f"but this operation has no data_source")
        elif scope.record_alias and self.csv is not None:
            ctx.error(scope.record_alias_at, f":{scope.record_alias}.… refers to a jsonb data_source element; "
                                             f"a CSV import reads its fields through field_mapping")

    def read_conflict_target(self) -> None:
        ctx, spec, at = self.ctx, self.ctx.spec, self.ctx.at
        cols = ctx.target.columns
        if "conflict_target" not in spec:
            if self.op_type == "upsert":
                ctx.error(at("operation_type"), "operation_type 'upsert' needs conflict_target")
            return
        if self.op_type != "upsert":
            ctx.error(at("conflict_target"), "conflict_target applies to upsert only", key=True)
        targets = spec["conflict_target"]
        for name in [targets] if isinstance(targets, str) else targets:
            column = cols.get(name)
            if column is None:
                ctx.error(at("conflict_target"), f"unknown column '{name}' of {ctx.target.name}"
                                                 f"{did_you_mean(name, cols)}")
                continue
            self.conflict_columns.append(column)
        if len(self.conflict_columns) == 1 and not (self.conflict_columns[0].primary_key
                                                    or self.conflict_columns[0].unique):
            ctx.error(at("conflict_target"), f"conflict_target '{self.conflict_columns[0].name}' must be the "
                                             f"primary key or a unique field")
        assigned = {a.column.name for a in self.assignments}
        for column in self.conflict_columns:
            if column.name not in assigned and self.csv is not None:
                ctx.error(at("conflict_target"), f"conflict_target '{column.name}' must be in field_mapping")
            elif column.name not in assigned and self.data_key in spec:
                ctx.error(at("conflict_target"), f"conflict_target '{column.name}' must be set in upsert_data")

    def read_soft_delete(self) -> None:
        """soft_delete, restore and purge need an entity with soft_delete: true; on such an entity
        every statement but an insert leaves soft-deleted rows alone unless its condition names
        deleted_at (soft_delete always skips them, restore takes only them, purge takes those
        deleted before :cutoff)."""
        ctx, target, op_type = self.ctx, self.ctx.target, self.op_type
        if op_type in SOFT_DELETE_TYPES and not target.soft_delete:
            ctx.error(ctx.at("operation_type"), f"operation_type '{op_type}' needs an entity with soft_delete: true "
                                                f"({target.name} has none)")
            return
        if not target.soft_delete or op_type in ("insert", "upsert"):
            return
        deleted_at = target.columns["deleted_at"].ident
        named = self.where_frag is not None and any(name == "deleted_at" for name, _ in self.where_frag.columns)
        if op_type == "purge":
            ctx.scope.note("cutoff", "timestamptz", ctx.at("operation_type"), None)
            ctx.scope.roles.setdefault("cutoff", ("cutoff", "deleted_at"))
            self.soft_filter = f"{deleted_at} < {ctx.param_ref('cutoff')}"
            self.soft_count_filter = lambda position: f"{deleted_at} < ${position['cutoff']}"
        elif op_type == "restore":
            self.soft_filter = f"{deleted_at} IS NOT NULL"
        elif op_type == "soft_delete" or not named:
            self.soft_filter = f"{deleted_at} IS NULL"

    def soft_assignments(self) -> list[Assignment]:
        """What soft_delete and restore write besides the update_data."""
        cols = self.ctx.target.columns
        if self.op_type == "soft_delete":
            return [Assignment(cols["deleted_at"], "clock_timestamp()")]
        if self.op_type == "restore":
            return [Assignment(cols[name], "NULL") for name in ("deleted_at", "deleted_by", "deletion_reason")]
        return []

    def finish(self, params: list[Param]) -> Statement:
        by_name = {p.name: p for p in params}
        key_param = by_name.get(self.key_param_name) if self.key_param_name else None
        driver = self.driver
        if key_param and key_param.sql_type != self.ctx.target.primary_key.sql_type + "[]":
            key_param = None  # declared with another type: walk by condition instead
            driver = "keyset"
        count_sql = None
        if self.where_frag is not None:
            position = {p.name: i for i, p in enumerate(params, start=1)}
            count_sql = sf.render(self.where_frag,
                                  {ph.number: f"${position[ph.name]}" if ph.name in position else "NULL"
                                   for ph in self.where_frag.params()},
                                  set(sf.array_param_columns(self.where_frag)))
        where_sql, batch_where_sql = self.where_sql, self.batch_where_sql
        if self.soft_filter:
            where_sql, batch_where_sql = _and(where_sql, self.soft_filter), _and(batch_where_sql, self.soft_filter)
            position = {p.name: i for i, p in enumerate(params, start=1)}
            count_filter = self.soft_count_filter(position) if self.soft_count_filter else self.soft_filter
            count_sql = _and(count_sql, count_filter)
        spec = self.ctx.spec
        return Statement(
            operation_type=self.op_type, target=self.ctx.target,
            assignments=self.soft_assignments() + self.assignments, driver=driver,
            where_sql=where_sql, batch_where_sql=batch_where_sql, key_param=key_param,
            source_param=by_name.get(self.source_name) if self.source_name else None,
            conflict_columns=self.conflict_columns, count_sql=count_sql,
            ignore_conflicts=bool(spec.get("ignore_conflicts")) and self.op_type == "insert",
            hooked=bool(spec.get("hooks")), csv=self.csv,
            skips_deleted=self.soft_filter is not None and self.op_type in ("update", "delete"))


def _and(sql: str | None, extra: str) -> str:
    return extra if sql is None else f"({sql}) AND {extra}"


def key_driver(frag: sf.Fragment, pk: str) -> sf.Placeholder | None:
    """The `pk = ANY(:ids)` conjunct that lets the routine slice an id array."""
    arrays = sf.array_param_columns(frag)
    conjunct_params = set()
    for node in sf.top_level_conjuncts(frag):
        for number, column in arrays.items():
            if column == pk and _mentions_param(node, number) and _is_array_match(node):
                conjunct_params.add(number)
    for ph in frag.placeholders:
        if ph.number in conjunct_params and ph.field is None:
            return ph
    return None


def _mentions_param(node, number: int) -> bool:
    return any(isinstance(n, sf.ast.ParamRef) and n.number == number for n in sf._walk(node))


def _is_array_match(node) -> bool:
    return isinstance(node, sf.ast.A_Expr) and (
        (node.kind == A_Expr_Kind.AEXPR_OP_ANY and node.name[0].sval == "=")
        or (node.kind == A_Expr_Kind.AEXPR_IN and node.name[0].sval == "="))
