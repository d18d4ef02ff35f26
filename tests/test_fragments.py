"""specql.sqlfragment (SQL written in entity files) and specql.sqlnames (quoting)."""

from __future__ import annotations

import re

import pytest
from pglast import parser

from specql import sqlfragment as sf
from specql.sqlnames import literal, qi, qname


def one_expression(sql: str) -> bool:
    """True when `sql` is exactly one expression (what the generated WHERE (...) relies on)."""
    try:
        stmts = parser.parse_sql(f"SELECT 1 FROM t WHERE ({sql})")
    except parser.ParseError:
        return False
    select = stmts[0].stmt
    return len(stmts) == 1 and select.whereClause is not None and len(select.targetList) == 1


def render_all(text: str) -> str:
    frag = sf.parse_fragment(text)
    return sf.render(frag, {p.number: f"op.{p.name}" for p in frag.placeholders},
                     set(sf.array_param_columns(frag)))


# ----------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("text", [
    "status = 'active'",
    "id = ANY(:user_ids)",
    "last_login_at < NOW() - INTERVAL '1 year'\nAND status = 'active'\nAND is_admin = false\n",
    "status = 'x' -- trailing comment",
    "status = 'x' /* inline */ AND id IS NOT NULL",
    "(SELECT count(*) FROM pg_class) > 0",
    "status IN ('a', 'b') AND NOT (id = ANY(:ids))",
    "status = 'it''s'",
    "\"Mixed Case\" = 1",
    "coalesce(total_amount, 0) BETWEEN :lo AND :hi",
    "COUNT(*) FILTER (WHERE status = 'pending') > 0",
])
def test_accepts_one_expression(text):
    frag = sf.parse_fragment(text)
    assert frag.text == text
    assert one_expression(render_all(text))


def test_parenthesis_games_are_refused_where_they_start():
    # The fragment is parsed on its own, never inside a wrapper it could balance against.
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("true) OR (1=1")
    assert exc.value.message == 'SQL does not parse: syntax error at or near ")"'
    assert exc.value.offset == 4


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize("text", [
    "a), (b",
    "a) AS x, (b",
    "1; DROP TABLE x",
    "status = 'x'; DELETE FROM users",
    "a) UNION SELECT (b",
    "a) UNION ALL SELECT (b",
    "a) EXCEPT SELECT (b",
    "a) FROM x WHERE (b",
    "a)) FROM x WHERE ((b",
    "status = 'x') AS foo WHERE (true",
    "a) FROM pg_authid --",
    "a) GROUP BY (a",
    "a) HAVING (true",
    "a) ORDER BY (a",
    "a) LIMIT (1",
    "a) OFFSET (1",
    "a) WINDOW w AS (",
    "a) FOR UPDATE --",
    "a) INTO x FROM (b",
    "a = 1\n)\nUNION SELECT (1",
    "a)",
    "(a",
    "",
    "   ",
    "-- only a comment",
    "status = = 'x'",
    "x\x00",
])
def test_refuses_everything_but_one_expression(text):
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment(text)
    assert exc.value.message
    assert 0 <= exc.value.offset <= len(text)


def test_semicolon_offset_is_exact():
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("status = 'a;b' AND x = 1; DROP TABLE t")
    assert exc.value.offset == 24
    assert "';'" in exc.value.message


def test_second_clause_is_refused():
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("a) FROM x WHERE (b")
    assert exc.value.offset == 1
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("a FROM pg_authid")
    assert "one SQL expression" in exc.value.message


def test_syntax_error_offset_is_exact():
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("status = = 'x'")
    assert exc.value.offset == 9
    assert exc.value.message == 'SQL does not parse: syntax error at or near "="'


@pytest.mark.parametrize("text", ["NOW() +", "status = 'x' AND", "(a"])
def test_incomplete_sql_says_end_of_input_at_the_end(text):
    # The wrapper's own ")" must never show up in a message about the user's text.
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment(text)
    assert exc.value.message == "SQL does not parse: syntax error at end of input"
    assert exc.value.offset == len(text)


def test_error_messages_are_single_lines():
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("status = 'x' /* not closed")
    assert "\n" not in exc.value.message
    assert exc.value.offset == 13


@pytest.mark.parametrize("text", [
    "status = 'x' -- keep; old rows",
    "status = 'x' /* a; b */",
    "note = $$a;b$$",
    "note = $t$a;b$t$",
    "note = E'\\';'",
])
def test_semicolon_inside_comments_and_strings_is_not_a_second_statement(text):
    frag = sf.parse_fragment(text)
    assert one_expression(render_all(frag.text))


# ----------------------------------------------------------------------------- placeholders


@pytest.mark.parametrize("text, sql, found", [
    ("id = ANY(:ids)", "id = ANY($1  )", [("ids", None, 9)]),
    ("a = :x AND b = :x", "a = $1 AND b = $2", [("x", None, 4), ("x", None, 15)]),
    ("name = :rec.name", "name = $1       ", [("rec", "name", 7)]),
    ("a = ':x'", "a = ':x'", []),
    ("a = 'it''s :x'", "a = 'it''s :x'", []),
    ("a = E'\\':x'", "a = E'\\':x'", []),
    ("\"col:x\" = 1", "\"col:x\" = 1", []),
    ("a = 1 -- :x\nAND b = :yy", "a = 1 -- :x\nAND b = $1 ", [("yy", None, 20)]),
    ("a = 1 /* :x */ AND b = :yy", "a = 1 /* :x */ AND b = $1 ", [("yy", None, 23)]),
    ("a = $$:x$$", "a = $$:x$$", []),
    ("a = $q$ :x $q$ AND b = :yy", "a = $q$ :x $q$ AND b = $1 ", [("yy", None, 23)]),
    ("a::int = :yy::int", "a::int = $1 ::int", [("yy", None, 9)]),
    ("a::text", "a::text", []),
])
def test_substitute_placeholders(text, sql, found):
    sub = sf.substitute_placeholders(text)
    placeholders = sub.placeholders
    expected = text
    for p in reversed(placeholders):  # no padding: an offset map keeps positions instead
        length = len(p.name) + 1 + (len(p.field) + 1 if p.field else 0)
        expected = expected[:p.offset] + f"${p.number}" + expected[p.offset + length:]
    assert sub.sql == expected
    assert [(p.name, p.field, p.offset) for p in placeholders] == found
    for p in placeholders:
        assert sub.origin[sub.sql.index(f"${p.number}")] == p.offset
    assert [p.number for p in placeholders] == list(range(1, len(found) + 1))
    for p in placeholders:
        assert text[p.offset] == ":"


def test_params_and_record_refs_are_told_apart():
    frag = sf.parse_fragment("a = :p AND b = :rec.b")
    assert [p.name for p in frag.params()] == ["p"]
    assert [(p.name, p.field) for p in frag.record_refs()] == [("rec", "b")]


@pytest.mark.parametrize("text", [
    "status = :s AND stauts = 1",
    "id = ANY(:user_ids) AND emial LIKE '%x'",
    "a = 'x' AND /* c */ stauts = :p",
    "x = :a AND y = :b AND z = :c AND w = :d AND v = :e AND u = :f AND t = :g AND "
    "s = :h AND r = :i AND q = :j AND p = :k AND stauts = :l",
])
def test_column_offsets_point_into_the_original_text(text):
    frag = sf.parse_fragment(text)
    assert frag.columns
    for name, offset in frag.columns:
        assert text[offset:offset + len(name)] == name, (name, offset)


def test_qualified_and_subquery_columns():
    frag = sf.parse_fragment("t.a = 1 AND b = 2 AND EXISTS (SELECT 1 FROM x WHERE x.c = zzz)")
    assert frag.columns == [("b", 12)]
    assert frag.qualified == [("t.a", 0)]


@pytest.mark.parametrize("text, aggregate", [
    ("count(*) > 0", True),
    ("COUNT(*) FILTER (WHERE status = 'pending') > 0", True),
    ("bool_and(active)", True),
    ("max(x) > :p", True),
    ("count(*) OVER () > 0", False),
    ("(SELECT count(*) FROM t) > 0", False),
    ("lower(status) = 'a'", False),
])
def test_aggregate_detection(text, aggregate):
    assert sf.parse_fragment(text).has_aggregate is aggregate


# ----------------------------------------------------------------------------- inference


def test_array_parameter_inference():
    frag = sf.parse_fragment("id = ANY(:ids) AND status IN (:old) AND x NOT IN (:bad) AND y <> ALL(:nope)")
    assert sf.array_param_columns(frag) == {1: "id", 2: "status", 3: "x", 4: "y"}
    assert sf.scalar_param_columns(frag) == {}


def test_scalar_parameter_inference():
    frag = sf.parse_fragment("a = :p AND :q < b AND c BETWEEN :lo AND :hi AND d IN (:x, :y) "
                             "AND e IS DISTINCT FROM :z AND lower(f) = :fn")
    assert sf.scalar_param_columns(frag) == {1: "a", 2: "b", 3: "c", 4: "c", 5: "d", 6: "d", 7: "e"}
    assert sf.array_param_columns(frag) == {}


def test_cast_parameter_inference():
    frag = sf.parse_fragment("a = :p::int AND b = CAST(:q AS text[]) AND c = :r")
    assert sf.cast_params(frag) == {1: "integer", 2: "text[]"}


# ----------------------------------------------------------------------------- rendering


def test_in_with_array_param_renders_as_any():
    frag = sf.parse_fragment("status IN (:statuses)")
    assert sf.render(frag, {1: "op.statuses"}, {1}) == "status = ANY(op.statuses)"


def test_not_in_with_array_param_renders_as_all():
    frag = sf.parse_fragment("status NOT IN (:statuses)")
    assert sf.render(frag, {1: "op.statuses"}, {1}) == "status <> ALL(op.statuses)"


def test_in_with_scalar_params_is_kept():
    frag = sf.parse_fragment("status IN (:a, :b)")
    assert sf.render(frag, {1: "op.a", 2: "op.b"}, set()) == "status IN (op.a, op.b)"
    frag = sf.parse_fragment("status IN (:a)")
    assert sf.render(frag, {1: "op.a"}, set()) == "status IN (op.a)"


def test_render_swaps_each_placeholder_and_nothing_else():
    frag = sf.parse_fragment("id = ANY(:ids) AND note = ':ids' AND status = :s")
    rendered = sf.render(frag, {1: "_keys", 2: 'bulk."s"'}, {1})
    assert rendered == "id = ANY(_keys) AND note = ':ids' AND status = bulk.s"


def test_render_never_leaks_raw_text():
    # comments and odd spacing are gone: the routine gets the parser's expression
    rendered = render_all("status   =   'x'  -- DROP TABLE users\n AND /* x */ id = ANY(:ids)")
    assert rendered == "status = 'x' AND id = ANY(op.ids)"


def test_render_keeps_quoted_identifiers_quoted():
    assert render_all('"Mixed Case" = :v AND "user" = 1') == '"Mixed Case" = op.v AND "user" = 1'


# ----------------------------------------------------------------------------- sqlnames


@pytest.mark.parametrize("name, quoted", [
    ("status", "status"),
    ("_x", "_x"),
    ("name", "name"),
    ("user", '"user"'),
    ("order", '"order"'),
    ("select", '"select"'),
    ("between", '"between"'),
    ("authorization", '"authorization"'),
    ("end", '"end"'),
    ("loop", '"loop"'),
    ("Mixed Case", '"Mixed Case"'),
    ("Status", '"Status"'),
    ("1abc", '"1abc"'),
    ("actor name", '"actor name"'),
    ('say "hi"', '"say ""hi"""'),
    ('"', '""""'),
    ("é", '"é"'),
])
def test_qi(name, quoted):
    assert qi(name) == quoted


@pytest.mark.parametrize("name", ["user", "order", "Mixed Case", 'say "hi"', "status", "select", "é", "a-b"])
def test_qi_round_trips_through_the_postgres_parser(name):
    stmt = parser.parse_sql(f"SELECT 1 AS {qi(name)} FROM {qname('public', name)}")[0].stmt
    assert stmt.targetList[0].name == name
    assert stmt.fromClause[0].relname == name
    assert stmt.fromClause[0].schemaname == "public"


def test_qname_and_literal():
    assert qname("public", "order") == 'public."order"'
    assert qname("My Schema", "t") == '"My Schema".t'
    assert literal("it's") == "'it''s'"
    assert literal("a\\b") == "'a\\b'"


# ----------------------------------------------------------------------------- hostile fragments (issue 8)


@pytest.mark.parametrize("text, offset", [
    ("id = ANY($1)", 9),
    ('"a b" $1', 6),
    ("status = :s AND id = $12", 21),
])
def test_positional_parameters_are_refused_where_they_are(text, offset):
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment(text)
    assert exc.value.message == f"positional parameters like {text[offset:].split(')')[0]} are not supported; write :name"
    assert exc.value.offset == offset


@pytest.mark.parametrize("text", ["a$1 = 1", "x = '$1'", "x = $$ $1 $$", 'x = "$1"', "x = 1 -- $1"])
def test_dollar_digits_inside_names_strings_and_comments_are_fine(text):
    sf.parse_fragment(text)


@pytest.mark.parametrize("text", ['"abc', 'a = "abc', "U&\"a\" UESCAPE '", "x::\"abc", "'abc"])
def test_unterminated_quotes_are_fragment_errors(text):
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment(text)
    assert exc.value.message.startswith("SQL does not parse: ")


@pytest.mark.parametrize("text", [
    "x = " + "1 + " * 300 + "1",
    "NOT " * 1000 + "true",
    "a" + "::int" * 500 + " = 1",
    "f(" * 300 + "1" + ")" * 300 + " = 1",
    "x = " + "ARRAY[" * 200 + "1" + "]" * 200,
])
def test_deep_expressions_are_refused_not_a_recursion_error(text):
    with pytest.raises(sf.FragmentError) as exc:
        frag = sf.parse_fragment(text)
        sf.render(frag, {})
    assert exc.value.message.startswith(("the expression is nested more than", "SQL does not parse"))


def test_parentheses_alone_do_not_nest_the_tree():
    assert sf.render(sf.parse_fragment("x = " + "(" * 3000 + "1" + ")" * 3000), {}) == "x = 1"


def test_expressions_at_the_depth_limit_render():
    text = "x = " + "1 + " * (sf.MAX_EXPRESSION_DEPTH - 4) + "1"
    assert sf.render(sf.parse_fragment(text), {}).startswith("x = 1 + 1")


def test_any_other_parser_failure_is_a_fragment_error(monkeypatch):
    def boom(sql):
        raise ValueError("something pglast did not expect")

    monkeypatch.setattr(sf.parser, "parse_sql", boom)
    with pytest.raises(sf.FragmentError) as exc:
        sf.parse_fragment("status = 'x'")
    assert exc.value.message == "SQL does not parse: something pglast did not expect"


NON_BOOLEAN = [
    ("7", "7 is a number, not a boolean"),
    ("1.5", "1.5 is a number, not a boolean"),
    ("'abc'", "'abc' is a string, not a boolean"),
    ("x + 1", "'+' gives a number, not a boolean"),
    ("-x", "'-' gives a number, not a boolean"),
    ("name || 'x'", "'||' gives text or an array, not a boolean"),
    ("data -> 'flag'", "'->' gives jsonb, not a boolean"),
    ("status::int", "a cast to integer is not a boolean"),
    ("CAST(status AS text)", "a cast to text is not a boolean"),
    ("now()", "now() does not give a boolean"),
    ("count(*)", "count() does not give a boolean"),
    ("CURRENT_DATE", "CURRENT_DATE is not a boolean"),
    ("ARRAY[1, 2]", "an array is not a boolean"),
    ("active AND 7", "7 is a number, not a boolean"),
    ("NOT (name || status)", "'||' gives text or an array, not a boolean"),
]


@pytest.mark.parametrize("text, reason", NON_BOOLEAN)
def test_non_boolean_reason(text, reason):
    assert sf.non_boolean_reason(sf.parse_fragment(text)) == reason


NOT_REFUSED = [
    "true", "'t'", "'yes'", "' off '", "NULL", "active", ":flag", "status = 'x'", "x > 1 AND y < 2",
    "flag::boolean", "CAST(flag AS bool)", "coalesce(active, false)", "EXISTS (SELECT 1)", "x IS NULL",
    "(SELECT count(*) FROM t) > 0", "count(*) < 10", "my_check(id)", "CASE WHEN a THEN true ELSE false END",
    "tags @> ARRAY['a']", "x::my_domain", "(a)", "NOT active",
]


@pytest.mark.parametrize("text", NOT_REFUSED)
def test_boolean_or_unknown_is_not_refused(text):
    assert sf.non_boolean_reason(sf.parse_fragment(text)) is None


@pytest.mark.parametrize("text, columns", [
    ("active", ["active"]),
    ("NOT active AND (archived OR status = 'x')", ["active", "archived"]),
    ("status = 'x'", []),
    ("coalesce(active, false)", []),
    ("t.active", []),
])
def test_boolean_operand_columns(text, columns):
    assert sf.boolean_operand_columns(sf.parse_fragment(text)) == columns


_TABLE = """CREATE TABLE t (id integer, x integer, y integer, name text, status text, data jsonb, tags text[],
             active boolean, archived boolean, a boolean, flag boolean);
             CREATE DOMAIN my_domain AS boolean;
             CREATE FUNCTION my_check(integer) RETURNS boolean LANGUAGE sql AS 'SELECT true';"""


def _condition_sql(text: str) -> str:
    clause = "HAVING" if "count(" in text else "WHERE"  # an aggregate is a precondition over the table
    return f"SELECT 1 FROM t {clause} {sf.render(sf.parse_fragment(text), {})}"


def test_postgres_agrees_with_non_boolean_reason(database_url):
    """Every refused condition fails in PostgreSQL for not being a boolean; every kept one runs."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_TABLE)
        for text, _ in NON_BOOLEAN:
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(_condition_sql(text))
            assert re.search(r"must be type boolean|invalid input syntax for type boolean", str(exc.value)), text
        for text in NOT_REFUSED:
            if text != ":flag":
                conn.execute(_condition_sql(text))
