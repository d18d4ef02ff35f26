"""specql.validate (JSON Schema -> located diagnostics) and specql.model's semantic checks."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from specql.diagnostics import Diagnostic, SpecError, did_you_mean
from specql.loader import load_file, load_text
from specql.model import build_project
from specql.validate import entity_schema, schema_diagnostics

REPO = Path(__file__).resolve().parent.parent

BASE = """\
name: user
fields:
  id: uuid
  status: string
patterns:
  - name: batch_operations
    operation: purge_users
    operation_type: delete
    where_condition: "status = 'deleted'"
"""
# Line 10 is the first line appended to BASE; a pattern key there starts at col 5.


def diags(text: str) -> list[str]:
    return [d.format() for d in schema_diagnostics(load_text(text, "e.yaml"))]


def build_errors(*texts: str) -> list[str]:
    docs = [load_text(t, f"f{i}.yaml") for i, t in enumerate(texts)]
    with pytest.raises(SpecError) as exc:
        build_project(docs)
    return [d.format() for d in exc.value.diagnostics]


# ----------------------------------------------------------------------------- the schema itself


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = entity_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["name", "fields"]
    assert schema["additionalProperties"] is False


SPEC_PATTERN_KEYS = """
operation description target_entity operation_type update_data insert_data upsert_data
where_condition params data_source conflict_target batch_size transaction error_handling
max_errors max_records requires_confirmation preconditions timeout progress_tracking
progress_notification_interval heartbeat_interval logging_level log_table metrics_table
collect_metrics notify_on_completion notification_channels notification_message parallel
max_workers worker_batch_size max_errors_per_worker steps csv_delimiter csv_has_header
field_mapping validation_rules skip_invalid_rows
""".split()


def test_schema_knows_every_key_of_spec_section_3():
    pattern = entity_schema()["$defs"]["pattern"]["properties"]
    assert sorted(set(SPEC_PATTERN_KEYS) - set(pattern)) == []
    step = entity_schema()["$defs"]["step"]["properties"]
    assert {"depends_on", "output"} <= set(step)


def test_schema_knows_every_entity_key_of_spec_section_2():
    assert {"name", "schema", "primary_key", "fields", "patterns", "table", "manage_table"} <= set(
        entity_schema()["properties"])


def test_schema_field_types_are_the_spec_types():
    enum = entity_schema()["$defs"]["field"]["oneOf"][0]["enum"]
    assert sorted(enum) == sorted(["uuid", "string", "text", "integer", "bigint", "decimal", "numeric",
                                   "boolean", "timestamp", "date", "jsonb"])


@pytest.mark.parametrize("entity", sorted((REPO / "entities").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_entities_have_no_schema_problems(entity: Path):
    assert schema_diagnostics(load_file(entity)) == []


def test_valid_document_has_no_diagnostics():
    assert diags(BASE) == []


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_points_at_the_key_with_suggestion():
    text = BASE.replace("name: user\n", "name: user\ndescripton: users\n", 1)
    assert diags(text) == ["e.yaml:2:1: error: unknown key 'descripton' (did you mean 'description'?)"]


def test_unknown_pattern_key_without_close_match_has_no_suggestion():
    assert diags(BASE + "    zzz: 1\n") == ["e.yaml:10:5: error: unknown key 'zzz'"]


def test_every_unknown_key_is_reported_sorted():
    text = BASE + "    qqq: 2\n    batch_sise: 10\n    zzz: 1\n"
    assert diags(text) == [
        "e.yaml:10:5: error: unknown key 'qqq'",
        "e.yaml:11:5: error: unknown key 'batch_sise' (did you mean 'batch_size'?)",
        "e.yaml:12:5: error: unknown key 'zzz'",
    ]


def test_unknown_key_in_field_mapping_has_suggestion_at_the_key():
    text = "name: user\nfields:\n  id: uuid\n  email:\n    type: string\n    uniqe: true\n"
    assert diags(text) == ["e.yaml:6:5: error: unknown key 'uniqe' (did you mean 'unique'?)"]


def test_unknown_key_in_value_mapping_has_suggestion_at_the_key():
    text = BASE.replace("operation_type: delete", "operation_type: update") + \
        "    update_data:\n      status: {vlaue: archived}\n"
    assert diags(text) == ["e.yaml:11:16: error: unknown key 'vlaue' (did you mean 'value'?)"]


# ----------------------------------------------------------------------------- shapes and values


@pytest.mark.parametrize("extra, expected", [
    ("    batch_size: 0\n", "e.yaml:10:17: error: patterns.0.batch_size must be at least 1, got 0"),
    ("    batch_size: 1000001\n", "e.yaml:10:17: error: patterns.0.batch_size must be at most 1000000, got 1000001"),
    ("    batch_size: '100'\n", "e.yaml:10:17: error: patterns.0.batch_size must be a whole number, got '100'"),
    ("    batch_size: true\n", "e.yaml:10:17: error: patterns.0.batch_size must be a whole number, got true"),
    ("    batch_size: 1.5\n", "e.yaml:10:17: error: patterns.0.batch_size must be a whole number, got 1.5"),
    ("    timeout: 30\n", "e.yaml:10:14: error: patterns.0.timeout must be a string, got 30"),
    ("    max_records: 0\n", "e.yaml:10:18: error: patterns.0.max_records must be at least 1, got 0"),
    ("    csv_delimiter: ab\n", "e.yaml:10:20: error: patterns.0.csv_delimiter must be at most 1 character(s)"),
    ("    preconditions: \"count(*) > 0\"\n",
     "e.yaml:10:20: error: patterns.0.preconditions must be a list, got 'count(*) > 0'"),
    ("    transaction: singel\n",
     "e.yaml:10:18: error: patterns.0.transaction: 'singel' is not one of: per_batch, single, commit_per_batch "
     "(did you mean 'single'?)"),
    ("    error_handling: continue_on_eror\n",
     "e.yaml:10:21: error: patterns.0.error_handling: 'continue_on_eror' is not one of: stop_on_error, "
     "continue_on_error, collect_errors (did you mean 'continue_on_error'?)"),
    ("    logging_level: verbose\n",
     "e.yaml:10:20: error: patterns.0.logging_level: 'verbose' is not one of: none, summary, detailed"),
    ("    params: {p: 5}\n", "e.yaml:10:17: error: patterns.0.params.p must be a string, got 5"),
])
def test_pattern_value_errors(extra, expected):
    assert diags(BASE + extra) == [expected]


def test_pattern_name_must_be_batch_operations():
    text = BASE.replace("- name: batch_operations", "- name: bulk_operations")
    assert diags(text) == ["e.yaml:6:11: error: patterns.0.name must be 'batch_operations', got 'bulk_operations'"]


def test_missing_required_keys_are_each_reported():
    assert diags("description: nothing else\n") == [
        "e.yaml:1:1: error: missing required key 'fields' in the file",
        "e.yaml:1:1: error: missing required key 'name' in the file",
    ]


def test_missing_operation_in_pattern():
    text = BASE.replace("    operation: purge_users\n", "")
    assert diags(text) == ["e.yaml:6:5: error: missing required key 'operation' in patterns.0"]


@pytest.mark.parametrize("fields, expected", [
    ("fields: {}\n", "e.yaml:2:9: error: fields must not be empty"),
    ("fields:\n  - id\n", "e.yaml:3:3: error: fields must be a mapping, got a list"),
    # `int` is how most people spell integer; 'bigint' (the closest string) would mislead.
    ("fields:\n  id: uuid\n  n: int\n", "e.yaml:4:6: error: fields.n: unknown type 'int' (did you mean 'integer'?)"),
    ("fields:\n  id: uuid\n  n: bool\n", "e.yaml:4:6: error: fields.n: unknown type 'bool' (did you mean 'boolean'?)"),
    ("fields:\n  id: uuid\n  n: integr\n", "e.yaml:4:6: error: fields.n: unknown type 'integr' (did you mean 'integer'?)"),
    ("fields:\n  id: uuid\n  n:\n    type: strng\n",
     "e.yaml:5:11: error: fields.n.type: 'strng' is not one of: uuid, string, text, integer, bigint, decimal, "
     "numeric, boolean, timestamp, date, jsonb (did you mean 'string'?)"),
])
def test_field_errors(fields, expected):
    assert diags("name: t\n" + fields) == [expected]


def test_field_type_error_suggests_the_close_type():
    [d] = schema_diagnostics(load_text("name: t\nfields:\n  id: uuid\n  n: booleen\n", "e.yaml"))
    assert (d.line, d.col) == (4, 6)
    assert "unknown type 'booleen'" in d.message and "did you mean 'boolean'?" in d.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_document_that_is_not_a_mapping(text):
    assert diags(text) == ["e.yaml:1:1: error: an entity file must be a mapping with 'name' and 'fields'"]


def test_name_must_be_a_string():
    assert diags("name: 5\nfields:\n  id: uuid\n") == ["e.yaml:1:7: error: name must be a string, got 5"]


def test_diagnostics_are_single_lines_and_deduplicated():
    text = BASE + "    batch_size: 0\n    batch_sise: 1\n    transaction: x\n"
    lines = diags(text)
    assert len(lines) == len(set(lines)) == 3
    assert all("\n" not in line for line in lines)
    assert lines == sorted(lines, key=lambda s: tuple(int(x) for x in s.split(":")[1:3]))


# ----------------------------------------------------------------------------- did_you_mean / Diagnostic


def test_did_you_mean():
    assert did_you_mean("feilds", ["name", "fields"]) == " (did you mean 'fields'?)"
    assert did_you_mean("xyz", ["name", "fields"]) == ""


def test_diagnostic_format_and_sorting():
    a = Diagnostic("b.yaml", 1, 1, "m")
    b = Diagnostic("a.yaml", 9, 3, "m", "warning")
    c = Diagnostic("a.yaml", 10, 1, "m")
    assert sorted([a, c, b]) == [b, c, a]  # by path, then line (numerically), then col
    assert b.format() == "a.yaml:9:3: warning: m"
    assert b.as_dict() == {"path": "a.yaml", "line": 9, "col": 3, "severity": "warning", "message": "m"}
    assert [d.line for d in SpecError([a, c, b]).diagnostics] == [9, 10, 1]


# ----------------------------------------------------------------------------- semantic checks (model)


def test_structurally_valid_and_semantically_valid_builds():
    project = build_project([load_text(BASE, "e.yaml")])
    [entity] = project.entities
    assert [op.name for op in entity.operations] == ["purge_users"]


def test_reserved_schema_specql():
    assert build_errors("name: x\nschema: specql\nfields:\n  id: uuid\n") == [
        "f0.yaml:2:9: error: schema 'specql' is reserved for specql's runtime tables"]


def test_same_entity_in_two_files():
    errors = build_errors("name: x\nfields:\n  id: uuid\n", "name: x\nfields:\n  id: uuid\n")
    assert errors[0] == "f1.yaml:1:7: error: entity 'x' is also defined in f0.yaml"


def test_reference_type_mismatch():
    errors = build_errors("name: a\nfields:\n  id: uuid\n",
                          "name: b\nfields:\n  id: uuid\n  a_id:\n    type: integer\n    references: a\n")
    assert errors == ["f1.yaml:6:17: error: 'a_id' is integer but a.id is uuid"]


def test_reference_to_unknown_column():
    errors = build_errors("name: a\nfields:\n  id: uuid\n",
                          "name: b\nfields:\n  id: uuid\n  a_id:\n    type: uuid\n    references: a.uid\n")
    assert errors == ["f1.yaml:6:17: error: unknown column 'uid' of a (did you mean 'id'?)"]


def test_default_cannot_use_a_parameter():
    assert build_errors("name: a\nfields:\n  id: uuid\n  s:\n    type: string\n    default: :x\n") == [
        "f0.yaml:6:14: error: a default cannot use a parameter"]


def test_jsonb_primary_key_is_refused():
    assert build_errors("name: a\nfields:\n  id: jsonb\n") == [
        "f0.yaml:3:7: error: a jsonb field cannot be the primary key"]


def test_column_named_like_a_routine_variable_is_refused():
    text = BASE.replace("  status: string\n", "  status: string\n  _keys: integer\n")
    [error] = build_errors(text)
    assert "column '_keys' of user has the name of a variable of the generated routine" in error


def test_max_errors_with_stop_on_error_is_only_a_warning():
    project = build_project([load_text(BASE + "    max_errors: 3\n", "e.yaml")])
    assert [d.format() for d in project.warnings] == [
        "e.yaml:10:5: warning: max_errors has no effect with error_handling: stop_on_error"]


def test_field_name_longer_than_63_bytes():
    long_name = "é" * 32  # 64 bytes in UTF-8, 32 characters
    errors = build_errors(f"name: a\nfields:\n  id: uuid\n  {long_name}: string\n")
    assert errors == [f"f0.yaml:4:3: error: field name '{long_name}' is longer than 63 bytes"]


def test_unquoted_yaml_date_default_is_not_called_an_unknown_type():
    # `default: 2024-01-01` is read by YAML as a date; for a date field that is exactly what
    # the author meant. At the very least the message must not claim an unknown *type*.
    text = "name: a\nfields:\n  id: uuid\n  d:\n    type: date\n    default: 2024-01-01\n"
    messages = [d.message for d in schema_diagnostics(load_text(text, "e.yaml"))]
    assert not any("unknown type" in m for m in messages), messages


def test_inferred_parameter_types():
    text = """\
name: user
fields:
  id: uuid
  status: string
  login_count: integer
patterns:
  - name: batch_operations
    operation: op
    operation_type: update
    update_data:
      status: :new_status
    where_condition: "id = ANY(:ids) AND login_count > :min_logins AND status IN (:old)"
"""
    [op] = build_project([load_text(text, "e.yaml")]).entities[0].operations
    assert [(p.name, p.sql_type) for p in op.params] == [
        ("ids", "uuid[]"), ("min_logins", "integer"), ("old", "text[]"), ("new_status", "text")]
    assert op.driver == "keys" and op.key_param.name == "ids"
    assert "= ANY(" in op.where_sql and " IN (" not in op.where_sql


def test_declared_parameter_type_wins_and_unused_declaration_warns():
    text = BASE.replace('"status = \'deleted\'"', '"status = :s"') + "    params:\n      s: text\n      unused: integer\n"
    project = build_project([load_text(text, "e.yaml")])
    [op] = project.entities[0].operations
    assert [(p.name, p.sql_type) for p in op.params] == [("s", "text")]
    assert [d.format() for d in project.warnings] == [
        "e.yaml:12:7: warning: parameter 'unused' is declared but never used"]


def test_every_problem_of_every_file_is_collected():
    bad1 = BASE + "    timeout: soon\n"
    bad2 = BASE.replace("name: user", "name: other").replace("purge_users", "purge_other") + \
        "    heartbeat_interval: often\n"
    errors = build_errors(bad1, bad2)
    assert [re.sub(r":\d+:\d+:", ":L:C:", e) for e in errors] == [
        "f0.yaml:L:C: error: timeout 'soon' is not a positive duration of at most 100 years, such as \"30 minutes\"",
        "f1.yaml:L:C: error: heartbeat_interval 'often' is not a positive duration of at most 100 years, such as \"10 seconds\"",
    ]
