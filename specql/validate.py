"""Structural validation of entity documents against the shipped JSON Schema."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jsonschema

from .diagnostics import Diagnostic, did_you_mean
from .loader import Document


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
    return repr(value) if isinstance(value, str) else str(value)


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}


def _message(error: jsonschema.ValidationError, root: dict, doc: Document) -> tuple[tuple, str, bool]:
    """(path, message, point-at-key) for one schema error."""
    path = tuple(error.absolute_path)
    where = ".".join(str(p) for p in path) or "the file"
    v = error.validator
    if v == "additionalProperties":
        allowed = _allowed_keys(error.schema, root)
        extras = [k for k in error.instance if k not in allowed]
        key = sorted(extras)[0]
        return path + (key,), f"unknown key '{key}'{did_you_mean(key, allowed)}", True
    if v == "required":
        missing = error.message.split("'")[1]
        return path, f"missing required key '{missing}' in {where}", False
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
        return path, f"{where} must be {bound} {error.validator_value}, got {error.instance}", False
    if v == "minLength":
        return path, f"{where} must not be empty", False
    if v == "maxLength":
        return path, f"{where} must be at most {error.validator_value} character(s)", False
    if v in ("minItems", "minProperties"):
        return path, f"{where} must not be empty", False
    if v == "oneOf":
        return path, _one_of_message(where, error), False
    return path, f"{where}: {error.message}", False


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
        keys = ", ".join(sorted(map(str, inst)))
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
    for error in validator.iter_errors(doc.data):
        paths.add(tuple(error.absolute_path))
        # A mapping where a oneOf allows mappings: its unknown keys, each with a suggestion.
        if error.validator == "oneOf" and isinstance(error.instance, dict):
            allowed = _object_branch_keys(error, root)
            unknown = [k for k in error.instance if k not in allowed]
            if allowed and unknown:
                for key in unknown:
                    kpath = tuple(error.absolute_path) + (key,)
                    d = doc.diag(kpath, f"unknown key '{key}'{did_you_mean(key, allowed)}", key=True)
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
                    d = doc.diag(kpath, f"unknown key '{key}'{did_you_mean(key, allowed)}", key=True)
                    found.setdefault((d.line, d.col, d.message), d)
    return sorted(found.values()), paths
