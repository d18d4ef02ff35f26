"""`data_source: csv_file` (SPEC §11): the CSV keys of an import, checked, and the staging table
the import is read from.

A CSV import is an insert or upsert whose records are the rows of a per-operation staging
table, `<schema>.<operation>_staging`: one text column per mapped target column (named as the
column), and specql's own columns (`_staging_id`, `_record`, `_line`, `_rejected`,
`_rejected_kind`, `_raw`). `specql run OP --csv FILE` fills it with COPY (specql/csvimport.py);
psql's `\\copy` can too. The routine takes `staging_id uuid` and reads that load's rows in
batches of `_record` order, casting each field to its column's type and checking the
`validation_rules` (SQL boolean expressions over the typed record, parsed with PostgreSQL's
parser like every fragment, their columns checked here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..diagnostics import did_you_mean
from ..sqlnames import MAX_IDENTIFIER_BYTES, literal, qi, qname
from .values import Assignment

CSV_KEYS = ("csv_delimiter", "csv_has_header", "field_mapping", "validation_rules", "skip_invalid_rows")
STAGING_PARAM = "staging_id"
# specql's own columns of a staging table; a mapped column may not be named like one.
STAGING_COLUMNS = ("_staging_id", "_record", "_line", "_rejected", "_rejected_kind", "_raw")
_CSV_COLUMN = re.compile(r"^csv_column_(\d+)$")


@dataclass
class Mapped:
    """One target column and the CSV field it is read from: a header name, or a 1-based position."""

    column: object  # entity.Column
    header: str | None = None
    position: int | None = None

    @property
    def source(self) -> str:
        return self.header if self.header is not None else f"csv_column_{self.position}"

    @property
    def cast_sql(self) -> str:
        """The staged text as the column's type (text needs no cast)."""
        ref = f"_s.{qi(self.column.name)}"
        if self.column.sql_type == "text":
            return ref
        return f"({ref})::{self.column.sql_type}"


@dataclass
class Rule:
    text: str  # as written (reported in a rejected row's reason)
    sql: str  # parsed and printed back, :params replaced


@dataclass
class CsvSource:
    schema: str
    operation: str
    delimiter: str
    has_header: bool
    mapping: list[Mapped]
    rules: list[Rule] = field(default_factory=list)
    skip_invalid_rows: bool = False

    @property
    def staging_name(self) -> str:
        return f"{self.operation}_staging"

    @property
    def staging_ident(self) -> str:
        return qname(self.schema, self.staging_name)

    @property
    def header_lines(self) -> int:
        return 1 if self.has_header else 0

    def record_json(self, alias: str = "_s") -> str:
        """SQL for a staged record as JSON (field -> text as staged), in chunks of 40 pairs
        (jsonb_build_object takes at most 100 arguments)."""
        pairs = [f"{literal(m.column.name)}, {alias}.{qi(m.column.name)}" for m in self.mapping]
        chunks = [pairs[i:i + 40] for i in range(0, len(pairs), 40)] or [[]]
        return " || ".join(f"jsonb_build_object({', '.join(c)})" for c in chunks)

    def to_json(self) -> dict:
        """What `specql run --csv` needs to read a file for this operation."""
        return {"schema": self.schema, "staging": self.staging_name, "staging_ident": self.staging_ident,
                "delimiter": self.delimiter, "has_header": self.has_header,
                "mapping": [[m.column.name, m.header, m.position] for m in self.mapping],
                "rules": [r.text for r in self.rules], "skip_invalid_rows": self.skip_invalid_rows}


def read_csv_source(ctx) -> tuple[CsvSource | None, list[Assignment]]:
    """The CSV keys of a `data_source: csv_file` pattern, and the assignments of its mapped
    columns (each reads the typed field of the current record, `_typed.<column>`)."""
    spec, at = ctx.spec, ctx.at
    delimiter = spec.get("csv_delimiter", ",")
    if delimiter in ('"', "\n", "\r") or not delimiter.isprintable() and delimiter != "\t":
        ctx.error(at("csv_delimiter"), f"csv_delimiter {delimiter!r} cannot separate CSV fields "
                                       f"(use a printable character other than a double quote, or a tab)")
    elif len(delimiter.encode("utf-8")) != 1:
        ctx.error(at("csv_delimiter"), f"csv_delimiter {delimiter!r} must be a single-byte character "
                                       f"(COPY's DELIMITER is one byte)")
    has_header = spec.get("csv_has_header", True)
    cols = ctx.target.columns
    mapping: list[Mapped] = []
    if "field_mapping" not in spec:
        ctx.error(at("data_source"), "data_source: csv_file needs field_mapping (target column -> a header "
                                     "name or csv_column_N)")
    for column_name, source in (spec.get("field_mapping") or {}).items():
        mpath = at("field_mapping", column_name)
        column = cols.get(column_name)
        if column is None:
            ctx.error(mpath, f"unknown column '{column_name}' of {ctx.target.name}{did_you_mean(column_name, cols)}",
                      key=True)
            continue
        if column_name in STAGING_COLUMNS:
            ctx.error(mpath, f"column '{column_name}' has the name of a column specql adds to the staging "
                             f"table; rename the column", key=True)
            continue
        m = _CSV_COLUMN.match(source.strip())
        if m:
            position = int(m.group(1))
            if position < 1 or position > 1600:
                ctx.error(mpath, f"{source}: CSV columns are numbered from csv_column_1 (at most 1600)")
                continue
            mapping.append(Mapped(column, position=position))
        elif not has_header:
            ctx.error(mpath, f"'{source}' names a header column, but csv_has_header is false; "
                             f"write csv_column_N (1-based)")
        else:
            mapping.append(Mapped(column, header=source))
    rules: list[Rule] = []
    mapped_names = {m.column.name for m in mapping}
    for i, text in enumerate(spec.get("validation_rules") or []):
        rpath = at("validation_rules", i)
        frag = ctx.parse(text, rpath)
        if frag is None or not ctx.check_boolean(frag, rpath, "a validation rule"):
            continue
        if frag.has_aggregate:
            ctx.error(rpath, f"aggregate function {frag.aggregate_name}() is not allowed in a validation rule "
                             f"(it is checked on each record)", offset=frag.aggregate_offset)
            continue
        bad = False
        for name, offset in frag.columns:
            if name not in mapped_names:
                where = "is not mapped from the CSV" if name in cols else f"is not a column of {ctx.target.name}"
                ctx.error(rpath, f"validation rule reads column '{name}', which {where}"
                                 f"{did_you_mean(name, mapped_names)}", offset=offset)
                bad = True
        for name, offset in frag.qualified:
            ctx.error(rpath, f"validation rule names '{name}': write the record's columns by name", offset=offset)
            bad = True
        if not bad:
            rules.append(Rule(" ".join(text.split()), ctx.render_fragment(frag, rpath)))
    if len(f"{ctx.name}_staging".encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        ctx.error(at("operation"), f"operation name '{ctx.name}' is too long for its staging table "
                                   f"'{ctx.name}_staging' (at most {MAX_IDENTIFIER_BYTES} bytes)")
    for key in ("error_handling", "transaction"):
        if key == "transaction" and spec.get(key) != "single":
            continue
        if key in spec:
            ctx.error(at(key), f"'{key}: {spec[key]}' does not apply to a CSV import, which rejects rows one "
                               f"by one: use skip_invalid_rows (and max_errors)", key=True)
    source = CsvSource(schema=ctx.entity.schema, operation=ctx.name, delimiter=delimiter, has_header=has_header,
                       mapping=mapping, rules=rules, skip_invalid_rows=bool(spec.get("skip_invalid_rows", False)))
    assignments = [Assignment(m.column, f"_typed.{qi(m.column.name)}", kind="csv", ref=m.source) for m in mapping]
    return source, assignments
