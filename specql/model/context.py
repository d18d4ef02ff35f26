"""Reading one pattern's values and SQL fragments in the context of its operation.

A `Context` holds what every part of an operation's checks shares: the document (for
locations), the pattern, the target entity, the parameter scope, and the problem list.
Values and fragments are read through it, so each `:param` is noted in the scope and each
fragment's relations and functions are remembered, wherever the fragment is written.
"""

from __future__ import annotations

from typing import Any

from .. import sqlfragment as sf
from ..diagnostics import Diagnostic, did_you_mean
from ..loader import Document
from ..sqlnames import qi
from .names import shown
from .scope import Scope
from .values import PARAM_REF, RECORD_REF, Assignment, literal_sql, looks_like_sql, record_sql


# Column types a number constant can be assigned to (text takes it through an assignment cast).
_NUMBER_TYPES = frozenset({"integer", "bigint", "decimal", "numeric", "string", "text"})


class Context:
    def __init__(self, doc: Document, path: tuple, spec: dict, entity, target,
                 problems: list[Diagnostic], warnings: list[Diagnostic]):
        self.doc, self.path, self.spec = doc, path, spec
        self.entity, self.target = entity, target
        self.problems, self.warnings = problems, warnings
        self.name = spec["operation"]
        self.scope = Scope(self)
        self.relations: dict[str, tuple[tuple, int | None]] = {}  # tables and aliases named in SQL
        self.functions: list[tuple[str, tuple, int | None]] = []  # (function name, path, offset)
        # In a step (SPEC §8): the outputs of the steps before it, and those it cannot read yet.
        self.step_outputs: dict = {}
        self.unavailable_outputs: dict[str, str] = {}
        self.input_params: list[str] = []

    def for_step(self, index: int, spec: dict, registry: dict) -> "Context | None":
        """The context of step `index` of this pattern's steps: its own keys and target, the
        operation's name, parameters and problem lists (SPEC §8)."""
        import copy

        step = copy.copy(self)
        step.path, step.spec = self.at("steps", index), spec
        step.step_outputs, step.unavailable_outputs, step.input_params = {}, {}, []
        if "target_entity" in spec:
            target = registry.get(spec["target_entity"])
            if target is None:
                self.error(step.at("target_entity"), f"unknown target_entity '{spec['target_entity']}'"
                                                     f"{did_you_mean(spec['target_entity'], registry)}")
                return None
            step.target = target
        return step

    # -- reporting

    def error(self, path: tuple, message: str, *, key=False, offset=None) -> None:
        self.problems.append(self.doc.diag(path, message, key=key, offset=offset))

    def warn(self, path: tuple, message: str, *, key=False) -> None:
        self.warnings.append(self.doc.diag(path, message, key=key, severity="warning"))

    def at(self, *keys) -> tuple:
        return self.path + keys

    def location(self, path: tuple, offset: int | None) -> str:
        d = self.doc.diag(path, "", offset=offset)
        return f"{d.path}:{d.line}:{d.col}"

    # -- values

    def param_ref(self, name: str) -> str:
        return f"{qi(self.name)}.{qi(name)}"

    def assignment(self, raw: Any, column, path: tuple) -> Assignment | None:
        """The value written to `column`, remembering whether it reads an argument or a record field."""
        if isinstance(raw, str) and (m := PARAM_REF.match(raw.strip())):
            sql, kind, ref = self.value_sql(raw, column, path), "param", m.group(1)
        elif isinstance(raw, str) and (m := RECORD_REF.match(raw.strip())):
            sql, kind, ref = self.value_sql(raw, column, path), "record", m.group(2)
        else:
            sql, kind, ref = self.value_sql(raw, column, path), "sql", None
        return None if sql is None else Assignment(column, sql, kind, ref)

    def value_sql(self, raw: Any, column, path: tuple) -> str | None:
        if isinstance(raw, dict) and "value" in raw:
            return self.literal_or_error(raw["value"], column, path + ("value",))
        if isinstance(raw, dict) and "sql" in raw:
            return self.fragment_value(raw["sql"], path + ("sql",), column)
        if isinstance(raw, str):
            if (m := PARAM_REF.match(raw.strip())) and (m.group(1) in self.step_outputs
                                                          or m.group(1) in self.unavailable_outputs):
                self.error(path, f"output :{m.group(1)} holds many keys or records, not one value: read a record's "
                                 f"field as :{m.group(1)}.field, or walk its keys with a where_condition")
                return None
            if m := PARAM_REF.match(raw.strip()):
                self.scope.note(m.group(1), column.sql_type, path, None)
                self.scope.roles.setdefault(m.group(1), ("assign", column.name))
                return self.param_ref(m.group(1))
            if m := RECORD_REF.match(raw.strip()):
                self.scope.note_record(m.group(1), path, None)
                return record_sql(m.group(2), column, self.target)
            if looks_like_sql(raw):
                return self.fragment_value(raw, path, column)
        return self.literal_or_error(raw, column, path)

    def literal_or_error(self, raw: Any, column, path: tuple) -> str | None:
        sql = literal_sql(raw, column)
        if sql is None:
            hint = " (an SQL expression is written as {sql: \"...\"})" if isinstance(raw, str) else ""
            self.error(path, f"{shown(raw)} is not a valid {column.type} value for column '{column.name}'{hint}")
        return sql

    def fragment_value(self, text: str, path: tuple, column=None) -> str | None:
        frag = self.parse(text, path)
        if frag is None:
            return None
        self.check_columns(frag, path)
        if column is not None and isinstance(frag.expr, sf.ast.A_Const) and not frag.expr.isnull:
            # A constant written as SQL is a literal of the column's type: checked here, or the
            # table's DEFAULT (or every call of the routine) would fail on it.
            value = frag.expr.val
            text = getattr(value, "sval", None) if isinstance(value, sf.ast.String) else None
            number = isinstance(value, (sf.ast.Integer, sf.ast.Float))
            if (text is not None and literal_sql(text, column) is None) or (
                    number and column.type not in _NUMBER_TYPES):
                shown_value = shown(text) if text is not None else frag.text.strip()
                self.error(path, f"{shown_value} is not a valid {column.type} value for column '{column.name}'")
                return None
        return self.render_fragment(frag, path)

    # -- fragments

    def parse(self, text: str, path: tuple) -> sf.Fragment | None:
        try:
            frag = sf.parse_fragment(text)
        except sf.FragmentError as exc:
            self.error(path, exc.message, offset=exc.offset)
            return None
        for op, offset in frag.bad_operators:
            self.error(path, f"unknown operator '{op}' (did you mean '='?)", offset=offset)
        self.note_names(frag, path)
        names = {ph.number: ph.name for ph in frag.placeholders}
        for name, offset, number in frag.bad_casts:
            self.error(path, f"unknown type '{name}' in the cast of :{names.get(number, '?')}"
                             f"{did_you_mean(name, sf.KNOWN_TYPES)}", offset=offset)
        return None if frag.bad_operators or frag.bad_casts else frag

    def note_names(self, frag: sf.Fragment, path: tuple) -> None:
        """Remember the relations (which could capture parameter references) and the functions
        (which `specql test run` checks exist) that a fragment names, subqueries included."""
        for node in sf._walk(frag.expr, subqueries=True):
            if isinstance(node, sf.ast.RangeVar):
                self.relations.setdefault(node.relname, (path, None))
                if node.alias is not None:
                    self.relations.setdefault(node.alias.aliasname, (path, None))
            elif isinstance(node, sf.ast.RangeSubselect) and node.alias is not None:
                self.relations.setdefault(node.alias.aliasname, (path, None))
            elif isinstance(node, sf.ast.CommonTableExpr):
                self.relations.setdefault(node.ctename, (path, None))
            elif isinstance(node, sf.ast.FuncCall):
                name = ".".join(n.sval for n in node.funcname)
                found = frag.text.lower().find(node.funcname[-1].sval.lower())
                self.functions.append((name, path, found if found >= 0 else None))

    def check_boolean(self, frag: sf.Fragment, path: tuple, what: str) -> bool:
        """A condition whose type is known not to be boolean would fail at every call: refuse it."""
        reason = sf.non_boolean_reason(frag)
        if reason:
            self.error(path, f"{what} must be a boolean condition: {reason}")
            return False
        cols = self.target.columns
        for name in sf.boolean_operand_columns(frag):
            if name in cols and cols[name].type != "boolean":
                self.error(path, f"{what} must be a boolean condition: column '{name}' is {cols[name].type}, "
                                 f"not boolean (compare it, e.g. {name} = ...)")
                return False
        return True

    def check_columns(self, frag: sf.Fragment, path: tuple) -> None:
        cols = self.target.columns
        for name, offset in frag.columns:
            if name not in cols:
                self.error(path, f"unknown column '{name}' of {self.target.name}{did_you_mean(name, cols)}",
                           offset=offset)
        for name, offset in frag.qualified:
            qualifier, _, column = name.rpartition(".")
            if qualifier != self.target.table or column not in cols:
                self.error(path, f"unknown column reference '{name}' (columns of {self.target.name} are "
                                 f"written by name, or as {qi(self.target.table)}.column)", offset=offset)

    def infer_fragment_params(self, frag: sf.Fragment, path: tuple) -> None:
        arrays = sf.array_param_columns(frag)
        scalars = sf.scalar_param_columns(frag)
        casts = sf.cast_params(frag)
        cols = self.target.columns
        for ph in frag.placeholders:
            if ph.name in self.step_outputs or ph.name in self.unavailable_outputs:
                continue  # an earlier step's output, not a parameter (model/steps.py checks its use)
            if ph.field is not None:
                self.error(path, f":{ph.name}.{ph.field} (a data_source field) can only be used in "
                                 f"insert_data/upsert_data values", offset=ph.offset)
                continue
            sql_type = None
            if ph.number in arrays and arrays[ph.number] in cols:
                self.scope.roles.setdefault(ph.name, ("in", arrays[ph.number]))
            elif ph.number in scalars and scalars[ph.number] in cols:
                self.scope.roles.setdefault(ph.name, ("compare", scalars[ph.number]))
            if ph.number in casts:
                sql_type = casts[ph.number]
            elif ph.number in arrays and arrays[ph.number] in cols:
                sql_type = cols[arrays[ph.number]].sql_type + "[]"
            elif ph.number in scalars and scalars[ph.number] in cols:
                sql_type = cols[scalars[ph.number]].sql_type
            self.scope.note(ph.name, sql_type, path, ph.offset)

    def render_fragment(self, frag: sf.Fragment, path: tuple, swap: dict[int, str] | None = None) -> str:
        self.infer_fragment_params(frag, path)
        for column, values in sf.compared_literals(frag).items():
            self.scope.compared.setdefault(column, set()).update(values)
        replacement = {ph.number: self.param_ref(ph.name) for ph in frag.placeholders}
        for ph in frag.placeholders:
            if ph.name in self.step_outputs:
                replacement[ph.number] = self.step_outputs[ph.name].keys_sql(self.target.primary_key.sql_type)
            elif ph.name in self.unavailable_outputs:
                replacement[ph.number] = "NULL"
        replacement.update(swap or {})
        arrays = set(sf.array_param_columns(frag))
        return sf.render(frag, replacement, arrays)
