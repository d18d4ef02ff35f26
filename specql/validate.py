"""Structural validation of entity documents against the shipped JSON Schema.

Beyond the schema, every name that reaches generated SQL (as an identifier, or in the
`--` comment that says where a routine comes from) is checked for control characters:
a line break in a comment ends it, and the rest of the line would run as SQL. The check
is done here, on the document, so that the model never sees such a name.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources

import jsonschema

from .diagnostics import Diagnostic, did_you_mean, shown
from .loader import Document, scalar_positions


@lru_cache(maxsize=1)
def entity_schema() -> dict:
    return json.loads(resources.files("specql").joinpath("schema/entity.schema.json").read_text("utf-8"))


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return list(schema.get("properties", {}))


def _describe(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"'{shown(value)}'" if isinstance(value, str) else shown(value)


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}


def _message(error: jsonschema.ValidationError, root: dict, doc: Document) -> tuple[tuple, str, bool]:
    """(path, message, point-at-key) for one schema error."""
    path = tuple(error.absolute_path)
    where = _where(path)
    v = error.validator
    if v == "additionalProperties":
        allowed = _allowed_keys(error.schema, root)
        extras = [k for k in error.instance if k not in allowed]
        key = sorted(extras)[0]
        return path + (key,), unknown_key(key, allowed, root), True
    if v == "required":
        missing = error.message.split("'")[1]
        return path, f"missing required key '{shown(missing)}' in {where}", False
    if v == "enum":
        options = ", ".join(str(o) for o in error.validator_value)
        hint = did_you_mean(str(error.instance), [str(o) for o in error.validator_value])
        return path, f"{where}: {_describe(error.instance)} is not one of: {options}{hint}", False
    if v == "const":
        return path, f"{where} must be '{error.validator_value}', got {_describe(error.instance)}", False
    if v == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        return path, f"{where} must be {words}, got {_describe(error.instance)}", False
    if v in ("minimum", "maximum"):
        bound = "at least" if v == "minimum" else "at most"
        return path, f"{where} must be {bound} {error.validator_value}, got {shown(error.instance)}", False
    if v == "minLength":
        return path, f"{where} must not be empty", False
    if v == "maxLength":
        return path, f"{where} must be at most {error.validator_value} character(s)", False
    if v in ("minItems", "minProperties"):
        return path, f"{where} must not be empty", False
    if v == "oneOf":
        return path, _one_of_message(where, error), False
    return path, f"{where}: {shown(error.message, 200)}", False


def _where(path: tuple) -> str:
    return ".".join(shown(p, 40) for p in path) or "the file"


# Names people write for the field types: a suggestion closer than spelling distance.
TYPE_ALIASES = {"int": "integer", "int4": "integer", "int8": "bigint", "long": "bigint", "str": "string",
                "varchar": "string", "char": "string", "bool": "boolean", "float": "decimal",
                "double": "decimal", "money": "decimal", "real": "decimal", "timestamptz": "timestamp",
                "datetime": "timestamp", "json": "jsonb", "guid": "uuid"}


def _object_branch_keys(error: jsonschema.ValidationError, root: dict) -> list[str]:
    keys: list[str] = []
    for branch in error.validator_value:
        if "$ref" in branch:
            branch = root["$defs"][branch["$ref"].rsplit("/", 1)[-1]]
        if branch.get("type") == "object":
            keys.extend(k for k in branch.get("properties", {}) if k not in keys)
    return keys


def _one_of_message(where: str, error: jsonschema.ValidationError) -> str:
    inst = error.instance
    if isinstance(inst, dict):
        keys = shown(", ".join(sorted(map(str, inst))))
        if where.startswith("fields."):
            return f"{where}: a field mapping takes type, nullable, default, unique, references (got {keys})"
        return f"{where}: a mapping value must be {{sql: ...}} or {{value: ...}} (got {keys})"
    if where.startswith("fields."):
        hint = (f" (did you mean '{TYPE_ALIASES[str(inst).lower()]}'?)" if str(inst).lower() in TYPE_ALIASES
                else did_you_mean(str(inst), ["uuid", "string", "text", "integer", "bigint", "decimal", "numeric",
                                              "boolean", "timestamp", "date", "jsonb"]))
        return f"{where}: unknown type {_describe(inst)}{hint}"
    return f"{where}: {_describe(inst)} is not allowed here"


def schema_diagnostics(doc: Document) -> list[Diagnostic]:
    """Every structural problem of one document, located."""
    return schema_check(doc)[0]


def schema_check(doc: Document) -> tuple[list[Diagnostic], set[tuple]]:
    """Structural problems, and the paths of the values they were found in."""
    root = entity_schema()
    paths: set[tuple] = set()
    validator = jsonschema.Draft202012Validator(root)
    found: dict[tuple, Diagnostic] = {}
    if not isinstance(doc.data, dict):
        return [doc.diag((), "an entity file must be a mapping with 'name' and 'fields'")], {()}
    for path, d in text_check(doc) + number_check(doc):
        paths.add(path)
        found.setdefault((d.line, d.col, d.message), d)
    for error in validator.iter_errors(doc.data):
        paths.add(tuple(error.absolute_path))
        # A mapping where a oneOf allows mappings: its unknown keys, each with a suggestion.
        if error.validator == "oneOf" and isinstance(error.instance, dict):
            allowed = _object_branch_keys(error, root)
            unknown = [k for k in error.instance if k not in allowed]
            if allowed and unknown:
                for key in unknown:
                    kpath = tuple(error.absolute_path) + (key,)
                    d = doc.diag(kpath, f"unknown key '{shown(key)}'{did_you_mean(key, allowed)}", key=True)
                    found.setdefault((d.line, d.col, d.message), d)
                continue
        errors = [error]
        # For oneOf, prefer the deepest sub-error when one branch clearly matched the shape.
        if error.validator == "oneOf" and error.context:
            deep = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
            if deep:
                errors = [max(deep, key=lambda e: len(e.absolute_path))]
        for err in errors:
            path, message, at_key = _message(err, root, doc)
            d = doc.diag(path, message, key=at_key)
            found.setdefault((d.line, d.col, message), d)
        # additionalProperties reports all extras in one error; report each key.
        if error.validator == "additionalProperties":
            allowed = _allowed_keys(error.schema, root)
            for key in error.instance:
                if key not in allowed:
                    kpath = tuple(error.absolute_path) + (key,)
                    d = doc.diag(kpath, unknown_key(key, allowed, root), key=True)
                    found.setdefault((d.line, d.col, d.message), d)
    return sorted(found.values()), paths


def unknown_key(key: str, allowed: list[str], root: dict) -> str:
    """'unknown key' with a suggestion from the keys valid at that place. A key that is a
    step's (`function`, `input`, `depends_on`...) written on a pattern says where it goes,
    rather than naming the nearest pattern key by spelling."""
    step_keys = set(root["$defs"]["step"]["properties"])
    if key in step_keys and key not in allowed and "steps" in allowed:
        return (f"unknown key '{shown(key)}' here: it is a key of a step; write it under steps: in the "
                f"step it belongs to")
    return f"unknown key '{shown(key)}'{did_you_mean(key, allowed)}"


# ----------------------------------------------------------------------------- names

KEYS, ANY = object(), object()  # in a name path: every key of a mapping; every item or value

_DATA = ("update_data", "insert_data", "upsert_data", "field_mapping")
_IN_OPERATION = ["operation", "name", "target_entity", "log_table", "metrics_table", "data_source", "function",
                 "output", ("params", KEYS), ("params", ANY), ("conflict_target",), ("conflict_target", ANY),
                 ("notification_channels", ANY), ("select_fields", ANY), ("depends_on",), ("depends_on", ANY),
                 ("field_mapping", ANY)] + [(data, KEYS) for data in _DATA]
NAME_PATHS = [("name",), ("schema",), ("table",), ("primary_key",), ("fields", KEYS), ("fields", ANY, "references")] \
    + [base + (tuple(p) if isinstance(p, tuple) else (p,))
       for base in (("patterns", ANY), ("patterns", ANY, "steps", ANY)) for p in _IN_OPERATION]

# What PostgreSQL or a terminal would read as the end of a line or as a control: C0, DEL,
# C1 (with U+0085, next line) and the Unicode line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CHAR_NAMES = {"\n": "a line break (\\n)", "\r": "a carriage return (\\r)", "\t": "a tab (\\t)",
               "\x85": "a next line (U+0085)", "\u2028": "a line separator (U+2028)",
               "\u2029": "a paragraph separator (U+2029)"}
_NAME_RULE = "names cannot hold line breaks or other control characters"


def text_check(doc: Document) -> list[tuple[tuple, Diagnostic]]:
    """(path, diagnostic) for each name that holds a control character, at that character."""
    found = []
    for path, is_key, name in _names(doc.data, NAME_PATHS):
        m = CONTROL.search(name)
        if m is None:
            continue
        what = _CHAR_NAMES.get(m.group(0)) or f"a control character (U+{ord(m.group(0)):04X})"
        if is_key:
            where = _where(path[:-1])
            d = _key_diag(doc, path, m.start(), f"the name '{shown(name)}' in {where} contains {what}; {_NAME_RULE}")
        else:
            d = doc.diag(path, f"{_where(path)} contains {what}; {_NAME_RULE}", offset=m.start())
        found.append((path, d))
    return found


def number_check(doc: Document) -> list[tuple[tuple, Diagnostic]]:
    """(path, diagnostic) for each .inf or .nan: a jsonb value cannot hold one, and a
    numeric column should say so in SQL rather than through a YAML spelling."""
    found = []
    todo = [((), doc.data)]
    while todo:
        path, node = todo.pop()
        if isinstance(node, dict):
            todo.extend((path + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((path + (i,), v) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            spelt = ".nan" if math.isnan(node) else ("-.inf" if node < 0 else ".inf")
            found.append((path, doc.diag(path, f"{_where(path)}: {spelt} is not a finite number, and jsonb cannot "
                                               "hold it (for a numeric column write {sql: \"'NaN'::numeric\"})")))
    return found


def _names(data, patterns: list[tuple]):
    """(path, is_key, text) of every string that one of `patterns` leads to in `data`."""
    for pattern in patterns:
        todo = [((), data, pattern)]
        while todo:
            path, node, rest = todo.pop()
            if not rest:
                if isinstance(node, str):
                    yield path, False, node
                continue
            step, rest = rest[0], rest[1:]
            if step is KEYS and isinstance(node, dict) and not rest:
                yield from ((path + (k,), True, k) for k in node if isinstance(k, str))
            elif step is ANY and isinstance(node, (dict, list)):
                items = node.items() if isinstance(node, dict) else enumerate(node)
                todo.extend((path + (k,), v, rest) for k, v in items)
            elif isinstance(node, dict) and step in node:
                todo.append((path + (step,), node[step], rest))


def _key_diag(doc: Document, path: tuple, offset: int, message: str) -> Diagnostic:
    """A diagnostic at character `offset` of the key that names `path`."""
    mark = doc.key_mark(path)
    positions = scalar_positions(doc.text, mark) if mark.end else []
    if len(positions) != len(path[-1]):
        return Diagnostic(doc.path, mark.line, mark.col, message)
    index = positions[offset]
    line = doc.text.count("\n", 0, index)
    col = index - (doc.text.rfind("\n", 0, index) + 1)
    return Diagnostic(doc.path, line + 1, col + 1, message)
