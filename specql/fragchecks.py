"""Checks on a parsed SQL fragment's tree: how deep it is, and whether it is known not to be a boolean.

pglast prints an expression recursively, a few frames per level, and so does specql when it
renders one: a fragment nested deeper than MAX_EXPRESSION_DEPTH is refused once parsed.

And `where_condition: "7"` parses, generates and applies; then every call of the routine fails
with "argument of WHERE must be type boolean". The type of most expressions is only known
to PostgreSQL (a column, a function of the user's), but some are plain from the tree: a
number or a string that is no boolean input, arithmetic, concatenation, a cast to a
non-boolean type, a well-known function that returns something else. Those are named
here; anything else is left to PostgreSQL (None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pglast import ast, stream
from pglast.enums import A_Expr_Kind

from .diagnostics import shown

if TYPE_CHECKING:
    from .sqlfragment import Fragment

# What PostgreSQL's boolin accepts (case-insensitive, trimmed): prefixes of true/false/yes/no, on, off, 1, 0.
_BOOLEAN_INPUTS = frozenset(w[:n] for w in ("true", "false", "yes", "no") for n in range(1, len(w) + 1)) \
    | {"on", "of", "off", "1", "0"}

_OPERATORS = {"+": "a number", "-": "a number", "*": "a number", "/": "a number", "%": "a number",
              "^": "a number", "|/": "a number", "||/": "a number", "@": "a number",
              "||": "text or an array", "->": "jsonb", "->>": "text", "#>": "jsonb", "#>>": "text", "#-": "jsonb"}

# Type names as the parser writes them -> as the user knows them; none of them is boolean.
_NON_BOOLEAN_TYPES = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "smallint": "smallint", "integer": "integer",
    "int": "integer", "bigint": "bigint", "numeric": "numeric", "decimal": "numeric", "float4": "real",
    "real": "real", "float8": "double precision", "text": "text", "varchar": "character varying",
    "bpchar": "character", "char": "character", "name": "name", "uuid": "uuid", "date": "date",
    "timestamp": "timestamp", "timestamptz": "timestamp with time zone", "interval": "interval",
    "time": "time", "timetz": "time with time zone", "json": "json", "jsonb": "jsonb", "bytea": "bytea",
}

# Built-in functions that never return a boolean, whatever their arguments.
_NON_BOOLEAN_FUNCTIONS = frozenset("""
    count sum avg stddev variance array_agg string_agg json_agg jsonb_agg length char_length octet_length
    lower upper btrim ltrim rtrim concat concat_ws substring replace now clock_timestamp statement_timestamp
    transaction_timestamp timeofday abs round floor ceil ceiling trunc random gen_random_uuid to_char to_date
    to_timestamp to_number date_trunc date_part extract age jsonb_build_object json_build_object
    jsonb_build_array json_build_array array_length cardinality
""".split())

MAX_EXPRESSION_DEPTH = 64


def deeper_than(root, limit: int):
    """The first node found deeper than `limit` levels of nodes (subqueries included), or None."""
    todo = [(root, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, tuple):
            todo.extend((item, depth) for item in node)
        elif isinstance(node, ast.Node):
            if depth > limit:
                return node
            todo.extend((getattr(node, name), depth + 1) for name in node)
    return None


def non_boolean_reason(frag: Fragment) -> str | None:
    """Why the fragment's value is certainly not a boolean (one line), or None when it is or may be."""
    return _reason(frag.expr)


def boolean_operand_columns(frag: Fragment) -> list[str]:
    """Columns that stand where a boolean must be (`active`, `NOT a`, `a AND b = 1`): the model
    knows their types, and one that is not boolean makes the condition fail at every call."""
    found, todo = [], [frag.expr]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.BoolExpr):
            todo.extend(reversed(node.args))
        elif isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
            found.append(node.fields[0].sval)
    return found


def _reason(node) -> str | None:
    if isinstance(node, ast.BoolExpr):  # AND, OR, NOT: each argument must be a boolean
        return next((r for r in map(_reason, node.args) if r), None)
    if isinstance(node, ast.A_Const):
        return _constant_reason(node)
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP and node.name:
        op = getattr(node.name[-1], "sval", None)
        if op in _OPERATORS:
            return f"'{op}' gives {_OPERATORS[op]}, not a boolean"
        return None
    if isinstance(node, ast.TypeCast):
        return _cast_reason(node.typeName)
    if isinstance(node, ast.FuncCall):
        names = [getattr(n, "sval", "") for n in node.funcname]
        if names[-1].lower() in _NON_BOOLEAN_FUNCTIONS and (len(names) == 1 or names[0] == "pg_catalog"):
            return f"{names[-1].lower()}() does not give a boolean"
        return None
    if isinstance(node, ast.SQLValueFunction):
        return f"{stream.RawStream()(node)} is not a boolean"
    if isinstance(node, ast.A_ArrayExpr):
        return "an array is not a boolean"
    return None


def _constant_reason(node: ast.A_Const) -> str | None:
    if node.isnull:
        return None  # NULL takes the type its place asks for
    value = node.val
    if isinstance(value, ast.Integer):
        return f"{value.ival} is a number, not a boolean"
    if isinstance(value, ast.Float):
        return f"{shown(value.fval)} is a number, not a boolean"
    if isinstance(value, ast.String) and value.sval.strip().lower() not in _BOOLEAN_INPUTS:
        return f"'{shown(value.sval)}' is a string, not a boolean"
    if isinstance(value, ast.BitString):
        return "a bit string is not a boolean"
    return None


def _cast_reason(type_name: ast.TypeName) -> str | None:
    names = [getattr(n, "sval", "") for n in type_name.names]
    name = names[-1].lower()
    if type_name.arrayBounds:
        return f"a cast to {_NON_BOOLEAN_TYPES.get(name, name)}[] is not a boolean"
    if name in _NON_BOOLEAN_TYPES and (len(names) == 1 or names[0] == "pg_catalog"):
        return f"a cast to {_NON_BOOLEAN_TYPES[name]} is not a boolean"
    return None
