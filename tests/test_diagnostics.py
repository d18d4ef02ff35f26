"""Diagnostics stay one bounded line, and names cannot carry control characters (issue 8).

A diagnostic is read line by line by editors and CI: whatever a hostile entity file holds
(a line break in a name, a million-character value), each problem stays on one line of
bounded length. And a name that reaches generated SQL (an identifier, or text in a `--`
comment) is refused when it holds a control character: a line break there would end the
comment and run the rest of the line as SQL.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from specql.cli import main
from specql.diagnostics import MAX_MESSAGE, Diagnostic, SpecError, did_you_mean, escape, shown
from specql.loader import load_text
from specql.model import build_project
from specql.validate import schema_check

BASE = """\
name: user
fields:
  id: integer
  status: string
patterns:
  - name: batch_operations
    operation: purge_users
    operation_type: delete
    where_condition: "status = 'deleted'"
"""

ONE_LINE = re.compile(r"[^:\n]+:\d+:\d+: (error|warning): [^\n]+")


# ----------------------------------------------------------------------------- escaping and bounds


def test_diagnostic_escapes_control_characters_in_message_and_path():
    d = Diagnostic("odd\nname.yaml", 3, 4, "name 'x\nDROP TABLE t;\r\n--\x00\x1b[31m\u2028' is bad")
    assert d.format() == "odd\\nname.yaml:3:4: error: name 'x\\nDROP TABLE t;\\r\\n--\\0\\x1b[31m\\u2028' is bad"
    assert d.as_dict()["message"] == "name 'x\\nDROP TABLE t;\\r\\n--\\0\\x1b[31m\\u2028' is bad"
    assert "\n" not in d.format()


def test_diagnostic_message_is_bounded():
    d = Diagnostic("f.yaml", 1, 1, "name '" + "x" * 1_000_000 + "' is too long")
    assert len(d.message) == MAX_MESSAGE + 1
    assert d.message.endswith("x…")


def test_shown_escapes_then_cuts():
    assert shown("abc") == "abc"
    assert shown("a\tb\nc") == "a\\tb\\nc"
    assert shown("y" * 61) == "y" * 60 + "…"
    assert shown("y" * 60) == "y" * 60
    assert shown(12345, limit=3) == "123…"
    assert escape("\x7f\x85\u202e") == "\\x7f\\x85\\u202e"


def test_did_you_mean_ignores_huge_words():
    assert did_you_mean("statsu", ["status"]) == " (did you mean 'status'?)"
    assert did_you_mean("statsu" * 100_000, ["status"]) == ""


def test_a_huge_name_gives_short_output(tmp_path: Path):
    path = tmp_path / "huge.yaml"
    path.write_text(BASE.replace("name: user", "name: " + "u" * 990_000))
    result = CliRunner().invoke(main, ["validate", str(path)], catch_exceptions=False)
    assert result.exit_code == 1
    assert len(result.stderr) < 4_000, len(result.stderr)
    lines = result.stderr.splitlines()
    assert all(ONE_LINE.fullmatch(line) for line in lines[:-1]), lines
    assert "u" * 60 + "…" in result.stderr  # the name is echoed, cut short


def test_schema_messages_quote_values_short_and_escaped():
    text = BASE + "    batch_size: \"" + "9\\n" * 500 + "\"\n" + "    bogus_key_" + "k" * 300 + ": 1\n"
    diags, _ = schema_check(load_text(text, "e.yaml"))
    messages = [d.message for d in diags]
    assert len(messages) == 2
    assert messages[0].startswith("patterns.0.batch_size must be a whole number, got '9\\n9\\n")
    assert messages[1].startswith("unknown key 'bogus_key_kkk")
    assert all(len(m) < 150 for m in messages), messages


# ----------------------------------------------------------------------------- control characters in names


def problems(text: str) -> list[str]:
    doc = load_text(text, "e.yaml")
    diags, _ = schema_check(doc)
    return [d.format() for d in diags]


MESSAGE = "names cannot hold line breaks or other control characters"


@pytest.mark.parametrize("text, expected", [
    (BASE.replace("name: user", 'name: "x\\nDROP TABLE IF EXISTS public.canary;\\n--"'),
     f"e.yaml:1:9: error: name contains a line break (\\n); {MESSAGE}"),
    (BASE.replace("fields:", 'schema: "app\\u2028x"\nfields:'),
     f"e.yaml:2:13: error: schema contains a line separator (U+2028); {MESSAGE}"),
    (BASE.replace("fields:", 'table: "t\\x7f"\nfields:'),
     f"e.yaml:2:10: error: table contains a control character (U+007F); {MESSAGE}"),
    (BASE.replace("fields:", 'primary_key: "i\\x85d"\nfields:'),
     f"e.yaml:2:16: error: primary_key contains a next line (U+0085); {MESSAGE}"),
    (BASE.replace("  status: string", '  "sta\\ttus": string'),
     f"e.yaml:4:7: error: the name 'sta\\ttus' in fields contains a tab (\\t); {MESSAGE}"),
    (BASE.replace("  status: string", "  status: {type: integer, references: \"user\\r\"}"),
     f"e.yaml:4:44: error: fields.status.references contains a carriage return (\\r); {MESSAGE}"),
    (BASE.replace("operation: purge_users", 'operation: "purge\\nusers"'),
     f"e.yaml:7:22: error: patterns.0.operation contains a line break (\\n); {MESSAGE}"),
    (BASE + '    params:\n      "who\\x01": integer\n',
     f"e.yaml:11:11: error: the name 'who\\x01' in patterns.0.params contains a control character (U+0001); {MESSAGE}"),
    (BASE + '    conflict_target: [id, "st\\natus"]\n',
     f"e.yaml:10:30: error: patterns.0.conflict_target.1 contains a line break (\\n); {MESSAGE}"),
    (BASE + '    conflict_target: "st\\natus"\n',
     f"e.yaml:10:25: error: patterns.0.conflict_target contains a line break (\\n); {MESSAGE}"),
    (BASE + '    log_table: "logs\\n"\n',
     f"e.yaml:10:21: error: patterns.0.log_table contains a line break (\\n); {MESSAGE}"),
    (BASE + '    metrics_table: "m\\e"\n',
     f"e.yaml:10:22: error: patterns.0.metrics_table contains a control character (U+001B); {MESSAGE}"),
    (BASE + '    notification_channels: [ok, "ch\\nannel"]\n',
     f"e.yaml:10:36: error: patterns.0.notification_channels.1 contains a line break (\\n); {MESSAGE}"),
    (BASE + '    target_entity: "user\\n"\n',
     f"e.yaml:10:25: error: patterns.0.target_entity contains a line break (\\n); {MESSAGE}"),
    (BASE.replace("    operation_type: delete", '    operation_type: update\n    update_data: {"sta\\ntus": x}'),
     f"e.yaml:9:23: error: the name 'sta\\ntus' in patterns.0.update_data contains a line break (\\n); {MESSAGE}"),
])
def test_control_character_in_a_name_is_refused_where_it_is(text, expected):
    assert problems(text) == [expected]


def test_descriptions_and_messages_may_hold_line_breaks():
    text = BASE.replace("fields:", "description: |\n  two\n  lines\nfields:") + \
        "    notify_on_completion: true\n    notification_message: \"done\\n{processed_records} rows\"\n"
    assert problems(text) == []


def test_a_refused_name_never_reaches_the_model():
    doc = load_text(BASE.replace("name: user", 'name: "x\\nDROP TABLE t;\\n--"'), "e.yaml")
    with pytest.raises(SpecError) as exc:
        build_project([doc])
    assert [d.format() for d in exc.value.diagnostics] == [
        f"e.yaml:1:9: error: name contains a line break (\\n); {MESSAGE}"]


# ----------------------------------------------------------------------------- values PostgreSQL cannot read back


@pytest.mark.parametrize("value, where, shown_as", [
    ("{type: jsonb, default: {value: [1, .inf]}}", "4:46", "fields.status.default.value.1: .inf"),
    ("{type: decimal, default: .nan}", "4:36", "fields.status.default: .nan"),
    ("{type: decimal, default: -.Inf}", "4:36", "fields.status.default: -.inf"),
])
def test_non_finite_numbers_are_refused(value, where, shown_as):
    text = BASE.replace("  status: string", f"  status: {value}")
    assert problems(text) == [f"e.yaml:{where}: error: {shown_as} is not a finite number, and jsonb cannot hold it "
                              "(for a numeric column write {sql: \"'NaN'::numeric\"})"]
