"""Multi-step operations (SPEC §8): `steps:` read, ordered by dependency, and each step built.

One routine runs the steps in dependency order. A step is a statement like a single-step
operation's (select, update, delete, insert, upsert) or one call of a function
(custom_function), with its own batch_size; the run's policy (transaction, error mode,
limits, observability) applies to every step.

What a step hands on — the keys a select collects, the keys an insert or upsert creates,
the rows a function returns — is its *output*, kept in `specql.batch_operation_outputs`
in chunks, never in one array. A later step names it `:<output>` (default
`<step name>_ids`): `pk IN (:x)` / `pk = ANY(:x)` walks its keys, `:x.field` reads its
records as a data source, `input: :x` passes it to a function.

The seed's files name outputs loosely (`:validated_user_ids` after a step called
`validate_data`). A `:name` that is not an output and not a declared parameter, but looks
like one of the steps, is refused with the fix spelled out: it would otherwise silently
become an argument the caller has to supply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher

from ..diagnostics import did_you_mean
from ..sqlnames import literal, qi
from .names import check_identifier, shown
from .scope import Param
from .statement import Statement, StatementReader
from .values import PARAM_REF, RECORD_REF

STEP_TYPES = ("select", "update", "delete", "insert", "upsert", "custom_function")
# The keys each step type reads (besides name, description, operation_type, depends_on,
# output, batch_size, target_entity): a key of another type's is refused at its place.
_TYPE_KEYS = {
    "select": {"where_condition", "select_fields"},
    "update": {"where_condition", "update_data"},
    "delete": {"where_condition"},
    "insert": {"insert_data", "data_source"},
    "upsert": {"upsert_data", "data_source", "conflict_target"},
    "custom_function": {"function", "input"},
}
_TYPE_SPECIFIC = set().union(*_TYPE_KEYS.values())
# Keys of a single-step operation that belong to its steps when it has steps.
_STEP_ONLY_AT_TOP = ("operation_type", "where_condition", "update_data", "insert_data", "upsert_data",
                     "data_source", "conflict_target", "select_fields", "function", "input")
# Options a multi-step operation does not take (yet): each is refused where it is written.
_NOT_WITH_STEPS = {
    "max_records": "max_records applies to single-step operations (a run of steps cannot count up front "
                   "what later steps will touch)",
    "requires_confirmation": "requires_confirmation applies to single-step operations (a run of steps "
                             "cannot count up front what later steps will touch)",
    "parallel": "parallel workers do not apply to multi-step operations yet; the steps run one after "
                "another on one connection",
}
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_INTEGER_TYPES = {"smallint", "integer", "bigint"}  # keys of one cast to another
_STOP_TOKENS = {"id", "ids", "data", "the", "of", "to", "and", "step", "all"}


@dataclass
class StepOutput:
    """A step's output: the name later steps use, what it holds, and how they use it."""

    name: str
    step: str  # the step that writes it
    holds: str  # "keys" or "records"
    key_type: str  # SQL type of its keys (the producing step's target key, or a function's input type)
    record_fields: list[str] = field(default_factory=list)  # fields later steps read from its records
    used_as: set = field(default_factory=set)  # "keys", "records", "input"
    fields: list[str] | None = None  # the fields its records have (None: a function's, known when it runs)

    @property
    def literal(self) -> str:
        return literal(self.name)

    @property
    def stores_keys(self) -> bool:
        return "keys" in self.used_as or ("input" in self.used_as and self.holds == "keys")

    @property
    def stores_records(self) -> bool:
        return "records" in self.used_as or ("input" in self.used_as and self.holds == "records")

    @property
    def used(self) -> bool:
        return bool(self.used_as)

    def keys_sql(self, key_type: str | None = None) -> str:
        """All its keys as one array of their type, in order (a function's input)."""
        t = key_type or self.key_type
        return (f"ARRAY(SELECT _k.k::{t} FROM specql.batch_operation_outputs AS _o, "
                f"unnest(_o.keys) WITH ORDINALITY AS _k(k, i) "
                f"WHERE _o.operation_id = _result.operation_id AND _o.output = {self.literal} "
                f"ORDER BY _o.chunk, _k.i)")

    def records_sql(self) -> str:
        """All its records as one jsonb array, in order (a function's input)."""
        return (f"coalesce((SELECT jsonb_agg(_e.r ORDER BY _o.chunk, _e.i) "
                f"FROM specql.batch_operation_outputs AS _o, jsonb_array_elements(_o.records) WITH ORDINALITY AS _e(r, i) "
                f"WHERE _o.operation_id = _result.operation_id AND _o.output = {self.literal}), '[]'::jsonb)")


@dataclass
class FunctionCall:
    """A custom_function step's call: the function, its one argument (or none), and what it is."""

    name: str  # as written: schema.fn or fn (resolved by the routine's search_path)
    input_sql: str | None  # SQL of the argument, None for a call without one
    input_type: str | None  # the argument's SQL type, as to_regprocedure reads it
    input_text: str  # how the banner and errors describe the input

    @property
    def ident(self) -> str:
        return ".".join(qi(part) for part in self.name.split("."))

    @property
    def signature(self) -> str:
        return f"{self.ident}({self.input_type or ''})"


@dataclass
class Step:
    number: int  # position in run order, 1-based
    name: str
    operation_type: str
    statement: Statement
    batch_size: int
    depends_on: list[str]  # the steps it waits for (and is stopped by when they fail)
    output: StepOutput | None = None
    call: FunctionCall | None = None
    select_fields: list = field(default_factory=list)  # entity.Column
    description: str | None = None
    where_text: str | None = None  # the condition as written (the banner shows it)
    index: int = 0  # its place in the file's steps list (for locations)
    has_output_key: bool = False

    @property
    def label(self) -> str:
        return f"step_{self.number}"

    @property
    def literal(self) -> str:
        return literal(self.name)

    @property
    def captures_output(self) -> bool:
        """An insert or upsert whose created keys a later step reads."""
        return self.output is not None and self.output.used and self.operation_type in ("insert", "upsert")


def _a(word: str) -> str:
    """'a select', 'an update': the article and the word."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def output_default(step_name: str) -> str:
    return f"{step_name}_ids"


def _tokens(name: str) -> set[str]:
    return {t[:5] for t in re.split(r"[_\W]+", name.lower()) if t and t not in _STOP_TOKENS}


def _resembles(name: str, candidate: str) -> bool:
    if _tokens(name) & _tokens(candidate):
        return True
    return SequenceMatcher(None, name.lower(), candidate.lower()).ratio() >= 0.75


class StepsReader:
    """Reads `steps:` of one pattern: their names, order and outputs, then each step's statement."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.steps_spec: list[dict] = ctx.spec.get("steps") or []
        self.names: dict[str, int] = {}  # step name -> index in the file
        self.deps: dict[int, list[int]] = {}
        self.order: list[int] = []
        self.outputs: dict[str, tuple[int, str]] = {}  # output name -> (index, default holds)

    # -- the pattern's own keys

    def check_top_keys(self) -> None:
        ctx, spec = self.ctx, self.ctx.spec
        for key in _STEP_ONLY_AT_TOP:
            if key in spec:
                ctx.error(ctx.at(key), f"'{key}' belongs to a step: an operation with steps has none of its own; "
                                       f"write it under the step it applies to", key=True)
        for key, why in _NOT_WITH_STEPS.items():
            if spec.get(key):
                ctx.error(ctx.at(key), why, key=True)

    # -- names, dependencies, order

    def read_graph(self) -> bool:
        ctx = self.ctx
        n_problems = len(ctx.problems)
        for i, step in enumerate(self.steps_spec):
            name = step["name"]
            path = ctx.at("steps", i, "name")
            check_identifier(ctx.doc, path, name, "step name", ctx.problems)
            if name in self.names:
                first = ctx.location(ctx.at("steps", self.names[name], "name"), None)
                ctx.error(path, f"step name '{name}' is also used at {first}")
                continue
            self.names[name] = i
        for i, step in enumerate(self.steps_spec):
            raw = step.get("depends_on", None)
            if raw is None:
                self.deps[i] = [i - 1] if i > 0 else []
                continue
            listed = [raw] if isinstance(raw, str) else list(raw)
            deps = []
            for j, dep in enumerate(listed):
                dpath = ctx.at("steps", i, "depends_on") + (() if isinstance(raw, str) else (j,))
                if dep == step["name"]:
                    ctx.error(dpath, f"step '{dep}' cannot depend on itself")
                elif dep not in self.names:
                    ctx.error(dpath, f"unknown step {shown(dep)} in depends_on{did_you_mean(dep, self.names)}")
                elif self.names[dep] not in deps:
                    deps.append(self.names[dep])
            self.deps[i] = deps
        if len(ctx.problems) > n_problems:
            return False
        order = self._topological_order()
        if order is None:
            return False
        self.order = order
        for i, step in enumerate(self.steps_spec):
            name = step.get("output") or output_default(step["name"])
            opath = ctx.at("steps", i, "output") if "output" in step else ctx.at("steps", i, "name")
            if "output" in step:
                check_identifier(ctx.doc, opath, name, "output name", ctx.problems)
                if step["operation_type"] in ("update", "delete"):
                    ctx.error(opath, f"{_a(step['operation_type'])} step has no output (select, insert, upsert and "
                                     f"custom_function steps do)", key=True)
                    continue
            if step["operation_type"] in ("update", "delete"):
                continue
            if name in self.outputs:
                other = self.steps_spec[self.outputs[name][0]]["name"]
                ctx.error(opath, f"output '{name}' is also the output of step '{other}'")
                continue
            if name in (ctx.spec.get("params") or {}):
                ctx.error(ctx.at("params", name), f"parameter '{name}' has the name of the output of step "
                                                  f"'{step['name']}': :{name} could mean either; rename one",
                          key=True)
                continue
            holds = "records" if step["operation_type"] == "custom_function" else "keys"
            self.outputs[name] = (i, holds)
        return len(ctx.problems) == n_problems

    def _topological_order(self) -> list[int] | None:
        """Run order: dependencies first, otherwise the file's order; a cycle is an error."""
        remaining = dict(self.deps)
        done: list[int] = []
        while remaining:
            ready = [i for i, deps in sorted(remaining.items()) if all(d in done for d in deps)]
            if not ready:
                cycle = self._cycle(remaining)
                names = " -> ".join(self.steps_spec[i]["name"] for i in cycle)
                self.ctx.error(self.ctx.at("steps", cycle[0], "depends_on"),
                               f"the steps depend on each other in a cycle: {names}")
                return None
            done.append(ready[0])
            del remaining[ready[0]]
        return done

    def _cycle(self, remaining: dict[int, list[int]]) -> list[int]:
        start = min(remaining)
        path, seen = [start], {start}
        node = start
        while True:
            node = next(d for d in remaining[node] if d in remaining)
            if node in seen:
                return path[path.index(node):] + [node]
            path.append(node)
            seen.add(node)

    def ancestors(self, i: int) -> set[int]:
        found: set[int] = set()
        stack = list(self.deps[i])
        while stack:
            j = stack.pop()
            if j not in found:
                found.add(j)
                stack.extend(self.deps[j])
        return found

    # -- the steps

    def read_steps(self, op_batch_size: int, registry: dict) -> list[Step]:
        """Each step's statement keys (or call), in run order; outputs noted as later steps use them.
        The statements are finished by finish_steps, once every parameter has its type."""
        ctx = self.ctx
        steps: list[Step] = []
        outputs: dict[str, StepOutput] = {}
        for number, i in enumerate(self.order, start=1):
            spec = self.steps_spec[i]
            sctx = ctx.for_step(i, spec, registry)
            if sctx is None:
                continue
            before = self.ancestors(i)
            sctx.step_outputs = {name: outputs[name] for name, (j, _) in self.outputs.items()
                                 if j in before and name in outputs}
            sctx.unavailable_outputs = {name: self.steps_spec[j]["name"] for name, (j, _) in self.outputs.items()
                                        if name not in sctx.step_outputs and j != i}
            step = self._read_step(sctx, number, i, spec, op_batch_size)
            name = spec.get("output") or output_default(spec["name"])
            if name in self.outputs and self.outputs[name][0] == i:
                # Also for a step with problems: the steps after it read its output without more errors.
                output = StepOutput(name=name, step=spec["name"], holds=self.outputs[name][1],
                                    key_type=sctx.target.primary_key.sql_type,
                                    fields=None if step is None or step.call else [c.name for c in step.select_fields])
                outputs[name] = output
                if step is not None:
                    step.output = output
            if step is None:
                continue
            step.index, step.has_output_key = i, "output" in spec
            steps.append(step)
        return steps

    def _read_step(self, sctx, number: int, i: int, spec: dict, op_batch_size: int) -> Step | None:
        ctx = sctx
        op_type = spec["operation_type"]
        n_problems = len(ctx.problems)
        for key in sorted(_TYPE_SPECIFIC & set(spec) - _TYPE_KEYS[op_type]):
            owners = [t for t, keys in _TYPE_KEYS.items() if key in keys]
            ctx.error(ctx.at(key), f"'{key}' does not belong to {_a(op_type)} step (it belongs to "
                                   f"{' / '.join(owners)} steps)", key=True)
        if len(ctx.problems) > n_problems:
            return None
        depends_on = [self.steps_spec[d]["name"] for d in self.deps[i]]
        batch_size = spec.get("batch_size", op_batch_size)
        ctx.scope.record_alias = ctx.scope.record_alias_at = None
        known = set(ctx.scope.order)
        if op_type == "custom_function":
            call = self._read_call(ctx, spec)
            if call is None:
                return None
            statement = Statement(operation_type="custom_function", target=ctx.target, assignments=[],
                                  driver="call", where_sql=None, batch_where_sql=None, key_param=None,
                                  source_param=None)
            return Step(number, spec["name"], op_type, statement, batch_size, depends_on, call=call,
                        description=spec.get("description"))
        reader = StatementReader(ctx, op_type)
        if op_type != "select":
            reader.check_data_keys()
        source_output = self._read_step_source(ctx, reader, spec)
        reader.read_where()
        if op_type in ("insert", "upsert"):
            alias = self._record_output(ctx, spec, reader, source_output)
            if alias is not None:
                source_output = ctx.step_outputs[alias]
            if source_output is not None:
                reader.source_name = source_output.name  # read_assignments: the records come from it
            if len(ctx.problems) > n_problems:
                return None  # its records' source is refused: read_assignments would refuse every :x.field again
        reader.read_assignments()
        reader.read_conflict_target()
        if source_output is not None and source_output.fields is not None:
            for a in reader.assignments:
                if a.kind == "record" and a.ref not in source_output.fields:
                    has = (f"its records have {', '.join(source_output.fields)} (select_fields)"
                           if source_output.fields else "it holds keys only, no records")
                    ctx.error(ctx.at(reader.data_key, a.column.name),
                              f":{source_output.name}.{a.ref} reads a field that output :{source_output.name} of "
                              f"step '{source_output.step}' does not have: {has}")
        select_fields = self._read_select_fields(ctx, spec) if op_type == "select" else []
        self._check_output_uses(ctx, reader)
        self._check_loose_names(ctx, set(ctx.scope.order) - known)
        if len(ctx.problems) > n_problems:
            return None
        step = Step(number, spec["name"], op_type, None, batch_size, depends_on,
                    select_fields=select_fields, description=spec.get("description"),
                    where_text=spec.get("where_condition"))
        step.reader, step.source_output = reader, source_output
        if reader.key_param_name in ctx.step_outputs:
            step.key_output = ctx.step_outputs[reader.key_param_name]
            step.key_output.used_as.add("keys")
        if source_output is not None:
            source_output.used_as.add("records")
        return step

    def _read_step_source(self, ctx, reader, spec):
        """data_source: a parameter (as a single-step insert's) or an earlier step's output."""
        if spec["operation_type"] not in ("insert", "upsert") or "data_source" not in spec:
            return None
        m = PARAM_REF.match(str(spec["data_source"]).strip())
        if m and m.group(1) in ctx.step_outputs:
            return ctx.step_outputs[m.group(1)]
        if m and m.group(1) in ctx.unavailable_outputs:
            self._unavailable(ctx, ctx.at("data_source"), m.group(1), None)
            return None
        reader.read_data_source()
        return None

    def _record_output(self, ctx, spec, reader, source_output) -> str | None:
        """`:x.field` values without data_source: x must be an earlier step's output (returned)."""
        if source_output is not None or "data_source" in spec:
            return None
        for column, raw in (spec.get(reader.data_key) or {}).items():
            m = RECORD_REF.match(raw.strip()) if isinstance(raw, str) else None
            if not m:
                continue
            alias, path = m.group(1), ctx.at(reader.data_key, column)
            if alias in ctx.step_outputs:
                return alias
            if alias in ctx.unavailable_outputs:
                self._unavailable(ctx, path, alias, None)
                return None
            ctx.error(path, f":{alias}.{m.group(2)} reads the records of an output named '{alias}', but no step "
                            f"before this one has that output{self._suggest(ctx, alias, param=False)}")
            reader.source_name = alias  # reported here: not again as "no data_source"
            return None
        if spec["operation_type"] in ("insert", "upsert"):
            ctx.error(ctx.at("operation_type"), f"{_a(spec['operation_type'])} step needs records: data_source "
                                                f"(a jsonb parameter or an earlier step's :output), or values "
                                                f"such as :<output>.field")
        return None

    def _read_select_fields(self, ctx, spec) -> list:
        cols = ctx.target.columns
        chosen = []
        for j, name in enumerate(spec.get("select_fields") or []):
            column = cols.get(name)
            if column is None:
                ctx.error(ctx.at("select_fields", j), f"unknown column {shown(name)} of {ctx.target.name}"
                                                      f"{did_you_mean(name, cols)}")
                continue
            if column not in chosen:
                chosen.append(column)
        pk = ctx.target.primary_key
        return ([pk] if pk not in chosen and chosen else []) + chosen

    def _check_output_uses(self, ctx, reader) -> None:
        """An output in a condition is only the keys the step walks: `pk IN (:x)` / `pk = ANY(:x)`."""
        frag = reader.where_frag
        if frag is None:
            return
        wpath = ctx.at("where_condition")
        pk = ctx.target.primary_key.name
        for ph in frag.placeholders:
            if ph.name in ctx.unavailable_outputs:
                self._unavailable(ctx, wpath, ph.name, ph.offset)
            elif ph.name in ctx.step_outputs and ph.name != reader.key_param_name:
                ctx.error(wpath, f"output :{ph.name} holds keys of many rows: use it as a condition's "
                                 f"'{pk} IN (:{ph.name})' or '{pk} = ANY(:{ph.name})' (joined by AND to the rest)",
                          offset=ph.offset)
            elif ph.name in ctx.step_outputs and ctx.step_outputs[ph.name].holds == "keys":
                # The step walks them as its own keys: they are cast to its key type batch by batch.
                out, pk_type = ctx.step_outputs[ph.name], ctx.target.primary_key.sql_type
                if out.key_type != pk_type and not {out.key_type, pk_type} <= _INTEGER_TYPES:
                    ctx.error(wpath, f"output :{ph.name} holds {out.key_type} keys (of step '{out.step}'), but "
                                     f"{pk} of {ctx.target.name} is {pk_type}: a step walks an output as keys "
                                     f"of its own table", offset=ph.offset)

    def _unavailable(self, ctx, path, name: str, offset) -> None:
        producer = ctx.unavailable_outputs[name]
        ctx.error(path, f"output :{name} of step '{producer}' is not available here: step '{producer}' does "
                        f"not run before this step (add depends_on: {producer})", offset=offset)

    def _check_loose_names(self, ctx, new_params: set[str]) -> None:
        """A `:name` first met in this step that is not declared and looks like a step's output."""
        for name in sorted(new_params, key=ctx.scope.order.index):
            if name in ctx.scope.declared or name in ctx.step_outputs:
                continue
            suggestion = self._suggest(ctx, name)
            if suggestion:
                path, offset = ctx.scope.first_site[name]
                ctx.error(path, f":{name} is neither a parameter declared under params nor the output of a step "
                                f"before this one{suggestion}", offset=offset)

    def _suggest(self, ctx, name: str, param: bool = True) -> str:
        """'; did you mean …' naming the fix, for a name that resembles a step or its output."""
        for out_name, out in ctx.step_outputs.items():
            if _resembles(name, out_name) or _resembles(name, out.step):
                also = "; to make it a caller's parameter, declare it under params" if param else ""
                return (f"; did you mean :{out_name} (the output of step '{out.step}')? Write :{out_name}, or "
                        f"add 'output: {name}' to step '{out.step}'{also}")
        for out_name, producer in ctx.unavailable_outputs.items():
            if _resembles(name, out_name) or _resembles(name, producer):
                return (f"; step '{producer}' (output :{out_name}) does not run before this step: add "
                        f"depends_on: {producer}, and write :{out_name} or add 'output: {name}' to it")
        return ""

    def _read_call(self, ctx, spec) -> FunctionCall | None:
        name = spec.get("function")
        if name is None:
            ctx.error(ctx.at("operation_type"), "a custom_function step needs 'function': the SQL function it calls")
            return None
        if not _FUNCTION_NAME.match(name):
            ctx.error(ctx.at("function"), f"function must be a name such as fetch_data or app.fetch_data, "
                                          f"not {shown(name)}")
            return None
        ctx.functions.append((name, ctx.at("function"), None))
        if "input" not in spec:
            return FunctionCall(name, None, None, "no input")
        raw = spec["input"]
        ipath = ctx.at("input")
        if isinstance(raw, str) and (m := PARAM_REF.match(raw.strip())):
            sql, sql_type, text = self._input_ref(ctx, m.group(1), ipath)
            if sql is None:
                return None
            return FunctionCall(name, sql, sql_type, text)
        if isinstance(raw, dict) and raw:
            parts, n_problems = [], len(ctx.problems)
            for key, value in raw.items():
                vpath = ipath + (key,)
                check_identifier(ctx.doc, vpath, str(key), "input key", ctx.problems)
                if isinstance(value, str) and (m := PARAM_REF.match(value.strip())):
                    sql, sql_type, _ = self._input_ref(ctx, m.group(1), vpath)
                    if sql is None:
                        continue
                    parts.append(f"{literal(str(key))}, {sql if sql_type == 'jsonb' else f'to_jsonb({sql})'}")
                elif value is None or isinstance(value, (bool, int, float, str)):
                    parts.append(f"{literal(str(key))}, {literal(json.dumps(value))}::jsonb")
                else:
                    ctx.error(vpath, "an input value is a :parameter, an output or a constant")
            if len(ctx.problems) > n_problems:
                return None
            return FunctionCall(name, f"jsonb_build_object({', '.join(parts)})", "jsonb",
                                "{" + ", ".join(str(k) for k in raw) + "} as jsonb")
        ctx.error(ipath, "input must be a :parameter, an earlier step's :output, or a mapping of them "
                         "(e.g. input: {month: ':target_month'})")
        return None

    def _input_ref(self, ctx, name: str, path: tuple) -> tuple[str | None, str | None, str]:
        if name in ctx.step_outputs:
            out = ctx.step_outputs[name]
            out.used_as.add("input")
            if out.holds == "records":
                return out.records_sql(), "jsonb", f":{name} (records, as a jsonb array)"
            return out.keys_sql(), f"{out.key_type}[]", f":{name} (keys, as {out.key_type}[])"
        if name in ctx.unavailable_outputs:
            self._unavailable(ctx, path, name, None)
            return None, None, ""
        if name not in ctx.scope.declared:
            suggestion = self._suggest(ctx, name)
            if suggestion:
                ctx.error(path, f":{name} is neither a parameter declared under params nor the output of a step "
                                f"before this one{suggestion}")
                return None, None, ""
        ctx.scope.note(name, ctx.scope.declared.get(name), path, None)
        ctx.input_params.append(name)
        return ctx.param_ref(name), None, f":{name}"


def read_steps(ctx, op_batch_size: int, registry: dict) -> tuple[list[Step], StepsReader] | None:
    reader = StepsReader(ctx)
    reader.check_top_keys()
    if not reader.read_graph():
        return None
    steps = reader.read_steps(op_batch_size, registry)
    if len(steps) != len(reader.steps_spec):
        return None
    return steps, reader


def finish_steps(ctx, steps: list[Step], params: list[Param]) -> None:
    """Once every parameter has its type: each step's statement (its driver reading an output
    where it walks one), a call's input typed, and the fields later steps read from records."""
    types = {p.name: p.sql_type for p in params}
    for step in steps:
        call = step.call
        if call is not None and call.input_type is None and call.input_sql is not None:
            call.input_type = types.get(call.input_text[1:])
        reader = getattr(step, "reader", None)
        if reader is None:
            continue
        statement = reader.finish(params)
        key_output = getattr(step, "key_output", None)
        source_output = getattr(step, "source_output", None)
        if key_output is not None:
            if key_output.holds == "records":  # a function's rows used as keys: scalars of this key type
                key_output.key_type = statement.target.primary_key.sql_type
            statement = replace(statement, driver="output_keys", key_param=None, key_output=key_output)
        elif source_output is not None:
            statement = replace(statement, driver="output_records", source_param=None,
                                source_output=source_output)
            for a in statement.assignments:
                if a.kind == "record" and a.ref not in source_output.record_fields:
                    source_output.record_fields.append(a.ref)
        elif step.operation_type == "select" and statement.driver == "source":
            statement = replace(statement, driver="keyset")
        step.statement = statement
        del step.reader
    for step in steps:
        if step.captures_output and step.statement.partial_updates:
            ctx.error(ctx.at("steps", step.index, "output") if step.has_output_key else ctx.at("steps", step.index),
                      f"step '{step.name}': a later step reads the keys this upsert writes, but its records may "
                      f"leave out fields it updates ({', '.join(a.column.name for a in step.statement.partial_updates)}), "
                      f"which is applied in groups; reading those keys is not supported yet: give the fields "
                      f"constant or SQL values, or read the keys with a select step")


__all__ = ["FunctionCall", "Step", "StepOutput", "StepsReader", "STEP_TYPES", "finish_steps", "output_default",
           "read_steps"]
