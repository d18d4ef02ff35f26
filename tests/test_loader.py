"""specql.loader: YAML with the line and column of every key and value.

Lines and columns are 1-based. Each expected position below was counted by hand in the
YAML text of the test.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from specql.diagnostics import SpecError
from specql.loader import Mark, collect_files, load_file, load_text

ENTITY = """\
name: user
fields:
  id: uuid
  email:
    type: string
    nullable: false
patterns:
  - name: batch_operations
    operation: deactivate_inactive_users
    where_condition: |
      status = 'active'
      AND last_login < NOW()
    folded: >
      status = 'active'
      AND last_login < NOW()
    plain: status = 'active'
    double: "id = ANY(:user_ids) AND stauts = 'x'"
    single: 'status = ''a'' AND stauts = 1'
    escaped: "\\"Mixed\\" = 1 AND stauts = 2"
    plain_multiline: status = 'a'
      AND stauts = 1
    strip_block: |-
        indented_more = 1
        AND stauts = 2
    batch_size: 100
"""

P = ("patterns", 0)


@pytest.fixture(scope="module")
def doc():
    return load_text(ENTITY, "entities/user.yaml")


def lc(mark: Mark) -> tuple[int, int]:
    return mark.line, mark.col


def test_data_is_plain_python(doc):
    assert doc.path == "entities/user.yaml"
    assert doc.data["name"] == "user"
    assert doc.data["fields"]["email"] == {"type": "string", "nullable": False}
    assert doc.data["patterns"][0]["batch_size"] == 100
    assert doc.data["patterns"][0]["where_condition"] == "status = 'active'\nAND last_login < NOW()\n"
    assert type(doc.data) is dict and type(doc.data["patterns"]) is list


@pytest.mark.parametrize("path, expected", [
    (("name",), (1, 1)),
    (("fields",), (2, 1)),
    (("fields", "id"), (3, 3)),
    (("fields", "email"), (4, 3)),
    (("fields", "email", "nullable"), (6, 5)),
    (P + ("name",), (8, 5)),
    (P + ("operation",), (9, 5)),
    (P + ("where_condition",), (10, 5)),
    (P + ("batch_size",), (25, 5)),
])
def test_key_marks(doc, path, expected):
    assert lc(doc.key_mark(path)) == expected


@pytest.mark.parametrize("path, expected, style", [
    (("name",), (1, 7), None),
    (("fields", "id"), (3, 7), None),
    (("fields", "email", "type"), (5, 11), None),
    (("fields", "email", "nullable"), (6, 15), None),
    (P + ("operation",), (9, 16), None),
    (P + ("where_condition",), (10, 22), "|"),
    (P + ("folded",), (13, 13), ">"),
    (P + ("double",), (17, 13), '"'),
    (P + ("single",), (18, 13), "'"),
    (P + ("batch_size",), (25, 17), None),
])
def test_value_marks_and_styles(doc, path, expected, style):
    mark = doc.mark(path)
    assert lc(mark) == expected
    assert mark.style == style


def test_block_scalar_records_content_indent(doc):
    assert doc.mark(P + ("where_condition",)).block_indent == 6
    assert doc.mark(P + ("folded",)).block_indent == 6


def test_mark_falls_back_to_nearest_located_parent(doc):
    assert lc(doc.mark(P + ("no_such_key",))) == lc(doc.mark(P))
    assert lc(doc.mark(("nothing", "here"))) == (1, 1)
    # a key mark for a path without a key falls back to the value mark
    assert lc(doc.key_mark(P)) == lc(doc.mark(P))


# ----------------------------------------------------------------------------- fragment offsets


def test_fragment_offset_in_double_quoted_scalar(doc):
    # `    double: "id = ANY(:user_ids) AND stauts = 'x'"` -- the quote is col 13, `stauts` col 38
    value = doc.data["patterns"][0]["double"]
    offset = value.index("stauts")
    assert lc(doc.fragment_mark(P + ("double",), offset)) == (17, 38)


def test_fragment_offset_in_plain_scalar(doc):
    # `    plain: status = 'active'` -- `=` is at col 19
    assert lc(doc.fragment_mark(P + ("plain",), 7)) == (16, 19)


def test_fragment_offset_zero_points_at_first_character_of_quoted_sql(doc):
    # `    double: "id = ...` -- `id` starts at col 14 (col 13 is the opening quote)
    assert lc(doc.fragment_mark(P + ("double",), 0)) == (17, 14)


def test_fragment_offset_zero_in_block_scalar_is_first_content_line(doc):
    assert lc(doc.fragment_mark(P + ("where_condition",), 0)) == (11, 7)


def test_fragment_offset_on_second_line_of_block_scalar(doc):
    # `      AND last_login < NOW()` -- `last_login` is line 12, col 11
    value = doc.data["patterns"][0]["where_condition"]
    assert lc(doc.fragment_mark(P + ("where_condition",), value.index("last_login"))) == (12, 11)
    # and the first line too
    assert lc(doc.fragment_mark(P + ("where_condition",), value.index("'active'"))) == (11, 16)


def test_fragment_offset_in_folded_scalar_never_points_past_the_text(doc):
    value = doc.data["patterns"][0]["folded"]
    mark = doc.fragment_mark(P + ("folded",), value.index("last_login"))
    assert 13 <= mark.line <= 15


def test_fragment_offset_after_doubled_single_quotes(doc):
    # `    single: 'status = ''a'' AND stauts = 1'` -- `stauts` is at col 33 in the file,
    # though the loaded value has two characters fewer before it (col 31 is the D of AND).
    value = doc.data["patterns"][0]["single"]
    assert value == "status = 'a' AND stauts = 1"
    assert lc(doc.fragment_mark(P + ("single",), value.index("stauts"))) == (18, 33)


def test_fragment_offset_after_backslash_escapes(doc):
    # `    escaped: "\"Mixed\" = 1 AND stauts = 2"` -- `stauts` is at col 33
    value = doc.data["patterns"][0]["escaped"]
    assert value == '"Mixed" = 1 AND stauts = 2'
    assert lc(doc.fragment_mark(P + ("escaped",), value.index("stauts"))) == (19, 33)


def test_fragment_offset_on_continuation_line_of_plain_scalar(doc):
    # `      AND stauts = 1` (line 21) -- `stauts` is at col 11
    value = doc.data["patterns"][0]["plain_multiline"]
    assert value == "status = 'a' AND stauts = 1"
    assert lc(doc.fragment_mark(P + ("plain_multiline",), value.index("stauts"))) == (21, 11)


def test_fragment_offset_in_block_scalar_with_extra_first_line_indent():
    # `|2`: the content is indented 2 past the parent; the first line keeps 2 extra spaces
    text = "w: |2\n    a = 1\n  AND b = 2\n"
    doc = load_text(text, "f.yaml")
    assert doc.data["w"] == "  a = 1\nAND b = 2\n"
    assert lc(doc.fragment_mark(("w",), doc.data["w"].index("a = 1"))) == (2, 5)
    assert lc(doc.fragment_mark(("w",), doc.data["w"].index("b = 2"))) == (3, 7)


def test_diag_uses_key_value_or_fragment_position(doc):
    assert doc.diag(P + ("batch_size",), "m").format() == "entities/user.yaml:25:17: error: m"
    assert doc.diag(P + ("batch_size",), "m", key=True).format() == "entities/user.yaml:25:5: error: m"
    d = doc.diag(P + ("where_condition",), "m", offset=22, severity="warning")
    assert (d.line, d.col, d.severity) == (12, 11, "warning")


# ----------------------------------------------------------------------------- problems


def located(exc: pytest.ExceptionInfo) -> list[tuple[int, int, str]]:
    return [(d.line, d.col, d.message) for d in exc.value.diagnostics]


def test_duplicate_keys_are_all_reported_at_the_second_key():
    text = "name: a\nfields:\n  id: uuid\n  id: text\nname: b\n"
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    assert located(exc) == [(4, 3, "duplicate key 'id'"), (5, 1, "duplicate key 'name'")]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_documents(text):
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    [(line, col, message)] = located(exc)
    assert (line, col) == (1, 1)
    assert "empty" in message


def test_tab_indentation_points_at_the_tab():
    with pytest.raises(SpecError) as exc:
        load_text("name: a\nfields:\n  id: uuid\n\temail: string\n", "f.yaml")
    [(line, col, message)] = located(exc)
    assert (line, col) == (4, 1)
    assert message.startswith("invalid YAML: ")
    assert "\\t" in message or "tab" in message


@pytest.mark.parametrize("opener", ['"abc', "'abc", "[1, 2", "{a: 1"])
def test_unclosed_quote_or_bracket_at_end_of_file_points_at_the_opener(opener):
    # The end of the stream (line 5, past the last line) tells the user nothing; the
    # opener at line 4, col 4 is what misses its closing partner.
    text = f"name: a\nfields:\n  id: uuid\nx: {opener}\n"
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    [(line, col, message)] = located(exc)
    assert (line, col) == (4, 4)
    assert message.startswith("invalid YAML: ")


def test_complex_key_is_refused_with_its_position():
    with pytest.raises(SpecError) as exc:
        load_text("name: a\nfields:\n  ? [a, b]\n  : string\n", "f.yaml")
    assert located(exc) == [(3, 5, "mapping keys must be plain strings")]


def test_non_string_keys_keep_their_spelling():
    # YAML 1.1 reads `yes`/`on` as booleans and `1` as a number; as keys they are names.
    doc = load_text("yes: 1\non: 2\n1: 3\n", "f.yaml")
    assert list(doc.data) == ["yes", "on", "1"]
    assert lc(doc.key_mark(("on",))) == (2, 1)


def test_python_scalar_tag_is_refused_with_its_position():
    with pytest.raises(SpecError) as exc:
        load_text("name: a\nfields:\n  x: !!python/name:os.system\n", "f.yaml")
    [(line, col, message)] = located(exc)
    assert (line, col) == (3, 6)
    assert message.startswith("invalid YAML value")


def test_python_object_tags_are_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\nfields:\n  id: uuid\n"
    try:
        load_text(text, "f.yaml")
    except SpecError:
        pass
    assert not marker.exists()


def test_multiline_diagnostics_never_happen_for_yaml_errors():
    for text in ['a: "x\n', "a: [1, 2\n", "a: {b\n", "a:\n- b\n c: d\n", "\tname: x\n"]:
        with pytest.raises(SpecError) as exc:
            load_text(text, "f.yaml")
        for d in exc.value.diagnostics:
            assert "\n" not in d.message
            assert d.line >= 1 and d.col >= 1


def test_load_file_reads_utf8_and_reports_bad_bytes(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text("name: café\nfields:\n  id: uuid\n", encoding="utf-8")
    assert load_file(good, "shown.yaml").data["name"] == "café"
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\nfields:\n  id: uuid\n")
    with pytest.raises(SpecError) as exc:
        load_file(bad, "bad.yaml")
    [d] = exc.value.diagnostics
    assert (d.path, d.line, d.col) == ("bad.yaml", 1, 1)
    assert "UTF-8" in d.message


def test_load_file_missing(tmp_path: Path):
    with pytest.raises(SpecError) as exc:
        load_file(tmp_path / "nope.yaml")
    [d] = exc.value.diagnostics
    assert d.message.startswith("cannot read file")


def test_crlf_line_endings_keep_positions():
    doc = load_text("name: a\r\nfields:\r\n  id: uuid\r\n  email: string\r\n", "f.yaml")
    assert lc(doc.key_mark(("fields", "email"))) == (4, 3)
    assert lc(doc.mark(("fields", "email"))) == (4, 10)


# ----------------------------------------------------------------------------- collect_files


def test_collect_files_sorted_recursive_deduplicated(tmp_path: Path):
    (tmp_path / "b.yaml").write_text("x: 1\n")
    (tmp_path / "a.yml").write_text("x: 1\n")
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("x: 1\n")
    files, problems = collect_files([str(tmp_path), str(tmp_path / "b.yaml")])
    assert problems == []
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.yml", "b.yaml", "sub/c.yaml"]


def test_collect_files_reports_missing_and_empty(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    files, problems = collect_files([str(tmp_path / "missing.yaml"), str(empty)])
    assert files == []
    assert [(d.path, d.message) for d in problems] == [
        (str(tmp_path / "missing.yaml"), "no such file or folder"),
        (str(empty), "no *.yaml or *.yml files in this folder"),
    ]


# ----------------------------------------------------------------------------- hostile files (issue 8)


def load_errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    return [d.format() for d in exc.value.diagnostics]


def alias_bomb(levels: int) -> str:
    """A 'billion laughs' file: each level is a list of nine aliases of the level below."""
    lines = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "name: x\nfields: {id: integer}\nbomb:\n" + "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly_at_the_value_that_explodes():
    text = alias_bomb(9)  # 9^9 = 387 million values from about 500 bytes
    assert len(text) < 1000
    started = time.perf_counter()
    errors = load_errors(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 2, f"took {elapsed:.1f} s"  # a correctness bound: today it never finishes
    # a5 (line 9, its anchor at col 7) is 9^6 = 531,441 values: the first over 100,000 + the file size.
    assert errors == ["f.yaml:9:7: error: this value expands, through its aliases, to more than "
                      f"{100_000 + len(text):,} values; write it out or use fewer aliases"]


def test_a_few_aliases_are_fine():
    text = ("name: x\nfields: {id: integer}\ndefaults: &d {batch_size: 10, timeout: 1 minute}\n"
            "copies: [*d, *d, *d]\n")
    doc = load_text(text, "f.yaml")
    assert doc.data["copies"] == [{"batch_size": 10, "timeout": "1 minute"}] * 3
    assert lc(doc.mark(("copies", 2, "batch_size"))) == (3, 27)  # an alias points at its anchor


def test_self_referencing_alias_is_a_located_error():
    assert load_errors("name: x\nfields: {id: integer}\na: &x [1, *x]\n") == [
        "f.yaml:3:11: error: the alias *x is used inside the value it names (a recursive structure)"]
    assert load_errors("name: x\nm: &m\n  k: *m\n") == [
        "f.yaml:3:6: error: the alias *m is used inside the value it names (a recursive structure)"]


@pytest.mark.parametrize("deep", [
    "deep: " + "[" * 1500 + "]" * 1500,
    "deep:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "end: 1",
    "deep: " + "{a: " * 1000 + "1" + "}" * 1000,
])
def test_values_nested_too_deep_are_a_located_error(deep):
    errors = load_errors("name: x\nfields: {id: integer}\n" + deep + "\n")
    assert len(errors) == 1
    assert re.fullmatch(r"f\.yaml:\d+:\d+: error: values are nested more than 64 levels deep", errors[0])


def test_nesting_through_aliases_is_bounded_too():
    # Each level is shallow, but each alias puts the previous one 60 levels deeper.
    lines = ["a0: &a0 " + "[" * 60 + "]" * 60]
    lines += [f"a{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60 for i in range(1, 30)]
    errors = load_errors("\n".join(lines) + "\n")
    assert errors == ["f.yaml:2:64: error: values are nested more than 64 levels deep (through an alias)"]


def test_sixty_levels_are_fine():
    doc = load_text("name: x\nfields: {id: integer}\ndeep: " + "[" * 60 + "1" + "]" * 60 + "\n", "f.yaml")
    assert doc.data["name"] == "x"


@pytest.mark.parametrize("text, where", [
    ('name: "us\\0er"\nfields: {id: integer}\n', "1:10"),
    ("name: user\nfields:\n  id: integer\n  \"a\\x00b\": text\n", "4:5"),
    ('name: user\nfields: {id: integer}\ndescription: |\n  line one\n  line\0two\n', "5:7"),
])
def test_nul_in_any_string_is_refused_where_it_is(text, where):
    if "\0" in text:  # a raw NUL is refused by the YAML reader itself, located too
        errors = load_errors(text)
        assert errors == [f"f.yaml:{where}: error: invalid YAML: unacceptable character #x0000: "
                          "special characters are not allowed"]
        return
    errors = load_errors(text)
    assert errors == [f"f.yaml:{where}: error: a NUL character (\\0) is not allowed; "
                      "PostgreSQL text cannot hold it"]


def test_raw_control_character_is_located():
    errors = load_errors("name: user\nfields:\n  id: integer\n  st\x01atus: text\n")
    assert errors == ["f.yaml:4:5: error: invalid YAML: unacceptable character #x0001: "
                      "special characters are not allowed"]


@pytest.mark.parametrize("value", ["!!int abc", "!!float x", "!!bool maybe", "!!binary '***'",
                                   "!foo bar", "!!python/object:os.system x", "!!int 0x", "!!binary AAAA"])
def test_bad_tagged_values_are_located_errors(value):
    errors = load_errors(f"name: user\nfields: {{id: integer}}\nx: {value}\n")
    assert len(errors) == 1
    assert errors[0].startswith("f.yaml:3:4: error: invalid YAML value: "), errors
    assert "\n" not in errors[0]


def test_every_yaml_error_is_one_located_line():
    for text in ["a: *nope\n", "a: &x 1\nb: &x 2\nc: *x\n", "a: [1, 2\n", "? [a]\n: 1\n", "%YAML 9.9\n---\na: 1\n",
                 "a: 1\n---\nb: 2\n", "\ufeffa: 'x\n", "a: !!set {x, y}\n"]:
        try:
            load_text(text, "f.yaml")
        except SpecError as exc:
            for d in exc.diagnostics:
                assert re.fullmatch(r"f\.yaml:\d+:\d+: error: [^\n]+", d.format()), d.format()


def test_a_file_over_a_million_characters_is_refused_before_parsing():
    text = "name: x\nfields:\n" + "".join(f"  f{i}: integer\n" for i in range(80_000))
    assert len(text) > 1_000_000
    started = time.perf_counter()
    assert load_errors(text) == [f"f.yaml:1:1: error: the file has {len(text):,} characters; "
                                 "an entity file may have at most 1,000,000"]
    assert time.perf_counter() - started < 0.5


def test_libyaml_and_pure_python_compose_the_same_marks():
    from specql import yamlbounds

    if yamlbounds.FastBoundedLoader is None:
        pytest.skip("PyYAML without libyaml")
    fast = yamlbounds.FastBoundedLoader(ENTITY).get_single_node()
    slow = yamlbounds.BoundedLoader(ENTITY).get_single_node()

    def marks(node):
        out = [(type(node).__name__, node.tag, node.start_mark.index, node.end_mark.index,
                node.start_mark.line, node.start_mark.column, getattr(node, "style", None) or None)]
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else []
        for child in children:
            out.extend(marks(child))
        return out

    assert marks(fast) == marks(slow)


def test_a_lone_surrogate_is_a_located_error():
    assert load_errors('name: user\nfields: {id: integer}\nx: "a\ud800"\n') == [
        "f.yaml:3:6: error: invalid YAML: unacceptable character #xD800: special characters are not allowed"]


def test_keys_that_are_not_strings_are_kept_as_written():
    doc = load_text("~: 1\nnull: 2\ntrue: 3\n1e3: 4\n0x10: 5\n", "f.yaml")
    assert doc.data == {"~": 1, "null": 2, "true": 3, "1e3": 4, "0x10": 5}
