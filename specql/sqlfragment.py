"""SQL fragments written in entity files (conditions, preconditions, SQL values).

A fragment is parsed with PostgreSQL's own parser (pglast) as exactly one expression.
`:name` marks a routine parameter and `:rec.field` a field of the current data_source
element; both are swapped for `$n` before parsing and for real references when the
fragment is rendered back to SQL, so what reaches the generated routine is what the
parser understood, never the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pglast import ast, parser, stream, visitors
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS, UNRESERVED_KEYWORDS
from pglast.enums import A_Expr_Kind

from .fragchecks import (MAX_EXPRESSION_DEPTH, boolean_operand_columns, deeper_than,  # noqa: F401 (re-exported)
                         non_boolean_reason)

# Aggregates that make a precondition "over the target table" (SPEC §3 preconditions).
AGGREGATES = frozenset("""
    count sum avg min max bool_and bool_or every array_agg string_agg jsonb_agg json_agg
    jsonb_object_agg json_object_agg stddev stddev_pop stddev_samp variance var_pop var_samp
    bit_and bit_or percentile_cont percentile_disc mode corr covar_pop covar_samp
""".split())


class FragmentError(Exception):
    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True)
class Placeholder:
    """One `:name` or `:rec.field` occurrence in the fragment text."""

    number: int  # the $n it was replaced with
    name: str  # parameter name, or the record alias for `:rec.field`
    field: str | None  # field of the data_source element, or None for a parameter
    offset: int  # character offset of the ':' in the original text


@dataclass
class Fragment:
    text: str
    expr: ast.Node
    placeholders: list[Placeholder]
    columns: list[tuple[str, int]] = field(default_factory=list)  # unqualified column refs
    qualified: list[tuple[str, int]] = field(default_factory=list)  # a.b refs (not allowed)
    has_aggregate: bool = False
    aggregate_offset: int = 0
    aggregate_name: str = ""
    bad_operators: list[tuple[str, int]] = field(default_factory=list)
    bad_casts: list[tuple[str, int, int]] = field(default_factory=list)  # (type, offset, $n)

    def params(self) -> list[Placeholder]:
        return [p for p in self.placeholders if p.field is None]

    def record_refs(self) -> list[Placeholder]:
        return [p for p in self.placeholders if p.field is not None]


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = re.compile(rf":({_IDENT})(?:\.({_IDENT}))?")


@dataclass
class _Substituted:
    sql: str
    placeholders: list[Placeholder]
    origin: list[int]  # origin[i]: offset in the original text of sql[i]
    semicolons: list[int]  # offsets of ';' outside strings, quoted names and comments
    positional: list[tuple[int, str]] = field(default_factory=list)  # (offset, "$1") written by the user

    def original(self, offset: int) -> int:
        if not self.origin:
            return 0
        return self.origin[min(max(offset, 0), len(self.origin) - 1)] if offset < len(self.origin) \
            else self.origin[-1] + 1


def substitute_placeholders(text: str) -> _Substituted:
    """Replace `:name` / `:rec.field` outside strings, quoted names and comments with `$n`."""
    out: list[str] = []
    origin: list[int] = []
    found: list[Placeholder] = []
    semicolons: list[int] = []
    positional: list[tuple[int, str]] = []

    def keep(start: int, stop: int) -> None:
        out.append(text[start:stop])
        origin.extend(range(start, stop))

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "'" or ch == '"':
            escapes = ch == "'" and i > 0 and text[i - 1] in "eE"
            j = i + 1
            while j < n:
                if escapes and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == ch:
                    if j + 1 < n and text[j + 1] == ch:  # a doubled quote stands for itself
                        j += 2
                        continue
                    break
                j += 1
            keep(i, min(j + 1, n))
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            keep(i, j)
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            keep(i, j)
            i = j
        elif ch == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])):
            tag = m.group(0)
            j = text.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            keep(i, j)
            i = j
        elif ch == ":" and text.startswith("::", i):
            keep(i, i + 2)
            i += 2
        elif ch == ":" and (m := _PLACEHOLDER.match(text, i)):
            number = len(found) + 1
            found.append(Placeholder(number, m.group(1), m.group(2), i))
            ref = f"${number}"
            out.append(ref)
            origin.extend([i] * len(ref))
            i = m.end()
        elif ch == "$" and (m := re.match(r"\$[0-9]+", text[i:i + 12])) and not _continues_name(text, i):
            positional.append((i, m.group(0)))
            keep(i, i + len(m.group(0)))
            i += len(m.group(0))
        else:
            if ch == ";":
                semicolons.append(i)
            keep(i, i + 1)
            i += 1
    return _Substituted("".join(out), found, origin, semicolons, positional)


def _continues_name(text: str, i: int) -> bool:
    """Whether the '$' at `i` is inside a name (`a$1` is an identifier)."""
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_$")


_PREFIX = "SELECT "
_KEYWORDS = frozenset(RESERVED_KEYWORDS) | frozenset(UNRESERVED_KEYWORDS) | frozenset(COL_NAME_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS)

# Types a parameter may be cast to (`:days::integer`): the cast becomes its declared type.
KNOWN_TYPES = frozenset("""
    integer int int4 bigint int8 smallint int2 numeric decimal real float4 float8 text varchar
    boolean bool uuid date timestamp timestamptz interval jsonb json time timetz bytea
""".split()) | {"double precision", "character varying", "timestamp with time zone",
                "timestamp without time zone", "time with time zone", "time without time zone"}


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def parse_fragment(text: str) -> Fragment:
    """Parse `text` as exactly one SQL expression; raises FragmentError with an offset."""
    if "\x00" in text:
        raise FragmentError("NUL character in SQL", text.index("\x00"))
    sub = substitute_placeholders(text)
    if sub.semicolons:
        raise FragmentError("must be one SQL expression; ';' is not allowed", sub.semicolons[0])
    if sub.positional:
        offset, written = sub.positional[0]
        raise FragmentError(f"positional parameters like {written} are not supported; write :name", offset)
    try:
        stmts = parser.parse_sql(_PREFIX + sub.sql)
    except parser.ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else len(_PREFIX)
        message = exc.args[0] if exc.args else "syntax error"
        offset = len(text) if "end of input" in message else sub.original(location - len(_PREFIX))
        raise FragmentError(f"SQL does not parse: {_one_line(message)}", min(offset, len(text))) from None
    except Exception as exc:  # pglast has more ways to fail than ParseError; none is a crash of specql
        raise FragmentError(f"SQL does not parse: {_one_line(exc) or type(exc).__name__}") from None
    select = stmts[0].stmt if len(stmts) == 1 else None
    target = select.targetList[0] if isinstance(select, ast.SelectStmt) and select.targetList else None
    if target is not None and target.name and target.name.lower() in _KEYWORDS and len(select.targetList) == 1:
        # `a = 1 AND` parses as `a = 1` labelled "and": it is an unfinished expression
        raise FragmentError("SQL does not parse: syntax error at end of input", len(text))
    if (target is None or select.op != 0 or len(select.targetList) != 1 or target.name
            or _has_other_clauses(select) or _is_star(target.val)):
        raise FragmentError("must be exactly one SQL expression (no second statement, clause, alias or column)")
    deepest = deeper_than(target.val, MAX_EXPRESSION_DEPTH)
    if deepest is not None:
        raise FragmentError(f"the expression is nested more than {MAX_EXPRESSION_DEPTH} levels deep",
                            sub.original((getattr(deepest, "location", None) or len(_PREFIX)) - len(_PREFIX)))
    frag = Fragment(text=text, expr=target.val, placeholders=sub.placeholders)
    _Inspector(frag, sub)(target.val)
    return frag


def _is_star(node) -> bool:
    return isinstance(node, ast.ColumnRef) and any(isinstance(f, ast.A_Star) for f in node.fields)


def _has_other_clauses(select: ast.SelectStmt) -> bool:
    for name in ("distinctClause", "intoClause", "fromClause", "whereClause", "groupClause",
                 "havingClause", "windowClause", "valuesLists", "sortClause", "limitOffset",
                 "limitCount", "lockingClause", "withClause"):
        if getattr(select, name, None):
            return True
    return False


class _Inspector(visitors.Visitor):
    def __init__(self, frag: Fragment, sub: _Substituted):
        self.frag = frag
        self.sub = sub

    def offset(self, node) -> int:
        return self.sub.original((getattr(node, "location", None) or len(_PREFIX)) - len(_PREFIX))

    def visit_ColumnRef(self, ancestors, node):
        fields = node.fields
        if len(fields) == 1 and isinstance(fields[0], ast.String):
            self.frag.columns.append((fields[0].sval, self.offset(node)))
        elif not (len(fields) == 1 and isinstance(fields[0], ast.A_Star)):
            self.frag.qualified.append((".".join(getattr(f, "sval", "*") for f in fields), self.offset(node)))
        return None

    def visit_FuncCall(self, ancestors, node):
        name = node.funcname[-1].sval.lower()
        if node.over is None and (node.agg_star or node.agg_filter is not None or name in AGGREGATES):
            if not self.frag.has_aggregate:
                self.frag.aggregate_offset = self.offset(node)
                self.frag.aggregate_name = name
            self.frag.has_aggregate = True
        return None

    def visit_A_Expr(self, ancestors, node):
        op = node.name[-1].sval if node.name and isinstance(node.name[-1], ast.String) else None
        if op in ("==", "===", "!=="):
            self.frag.bad_operators.append((op, self.offset(node)))
        return None

    def visit_TypeCast(self, ancestors, node):
        if isinstance(node.arg, ast.ParamRef):
            name = " ".join(n.sval for n in node.typeName.names if n.sval != "pg_catalog")
            if name.lower() not in KNOWN_TYPES:
                self.frag.bad_casts.append((name, self.offset(node.typeName), node.arg.number))
        return None

    def visit_SubLink(self, ancestors, node):
        # Subqueries may name other tables and their columns; only the outer level is checked.
        return visitors.Skip


def array_param_columns(frag: Fragment) -> dict[int, str]:
    """$n placeholders used as `col = ANY($n)` or `col IN ($n)`: number -> column."""
    found: dict[int, str] = {}
    for node in _walk(frag.expr):
        if not isinstance(node, ast.A_Expr) or not isinstance(node.lexpr, ast.ColumnRef):
            continue
        column = _column_name(node.lexpr)
        if column is None:
            continue
        if node.kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL) and isinstance(node.rexpr, ast.ParamRef):
            found[node.rexpr.number] = column
        elif (node.kind == A_Expr_Kind.AEXPR_IN and isinstance(node.rexpr, tuple) and len(node.rexpr) == 1
              and isinstance(node.rexpr[0], ast.ParamRef)):
            found[node.rexpr[0].number] = column
    return found


def scalar_param_columns(frag: Fragment) -> dict[int, str]:
    """$n compared with a column (`col <op> $n`, `$n <op> col`, BETWEEN, IN lists)."""
    found: dict[int, str] = {}
    arrays = array_param_columns(frag)
    for node in _walk(frag.expr):
        if not isinstance(node, ast.A_Expr):
            continue
        left, right = node.lexpr, node.rexpr
        if node.kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN,
                         A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            sides = [left] + (list(right) if isinstance(right, tuple) else [right])
            columns = [_column_name(s) for s in sides if isinstance(s, ast.ColumnRef)]
            columns = [c for c in columns if c]
            if len(columns) != 1:
                continue
            for side in sides:
                if isinstance(side, ast.ParamRef) and side.number not in arrays:
                    found.setdefault(side.number, columns[0])
    return found


def cast_params(frag: Fragment) -> dict[int, str]:
    """$n written with an explicit cast (`:p::int`): number -> type name as written."""
    found: dict[int, str] = {}
    for node in _walk(frag.expr):
        if isinstance(node, ast.TypeCast) and isinstance(node.arg, ast.ParamRef):
            found[node.arg.number] = stream.RawStream()(node.typeName)
    return found


def top_level_conjuncts(frag: Fragment) -> list[ast.Node]:
    expr = frag.expr
    if isinstance(expr, ast.BoolExpr) and expr.boolop == 0:  # AND_EXPR
        return list(expr.args)
    return [expr]


def _column_name(ref: ast.ColumnRef) -> str | None:
    if len(ref.fields) == 1 and isinstance(ref.fields[0], ast.String):
        return ref.fields[0].sval
    return None


def _walk(node, subqueries: bool = False):
    """Every node under `node`; a subquery (SubLink) is yielded but not entered unless
    `subqueries` (its tables and columns are not the target's)."""
    todo = [node]
    while todo:
        cur = todo.pop()
        if isinstance(cur, tuple):
            todo.extend(cur)
        elif isinstance(cur, ast.Node):
            yield cur
            if isinstance(cur, ast.SubLink) and not subqueries:
                continue
            for name in cur:
                todo.append(getattr(cur, name))


def render(frag: Fragment, replacement: dict[int, str], array_params: set[int] | None = None) -> str:
    """Deparse the fragment with each $n swapped for the SQL text in `replacement`.

    `col IN ($n)` whose parameter is an array becomes `col = ANY(...)` (and NOT IN
    becomes `<> ALL`), which is what the author meant and what PostgreSQL accepts.
    """
    array_params = array_params or set()
    nodes = {n: parse_fragment_sql(sql) for n, sql in replacement.items()}
    expr = _copy(frag.expr)

    class Swap(visitors.Visitor):
        def visit_A_Expr(self, ancestors, node):
            if (node.kind == A_Expr_Kind.AEXPR_IN and isinstance(node.rexpr, tuple) and len(node.rexpr) == 1
                    and isinstance(node.rexpr[0], ast.ParamRef) and node.rexpr[0].number in array_params):
                op = node.name[0].sval
                kind = A_Expr_Kind.AEXPR_OP_ANY if op == "=" else A_Expr_Kind.AEXPR_OP_ALL
                return ast.A_Expr(kind=kind, name=(ast.String(sval=op),), lexpr=node.lexpr,
                                  rexpr=nodes[node.rexpr[0].number], location=node.location)
            return None

        def visit_ParamRef(self, ancestors, node):
            return nodes[node.number]

    holder = ast.ResTarget(val=expr)
    Swap()(holder)
    return stream.RawStream()(holder.val)


def parse_fragment_sql(sql: str) -> ast.Node:
    """Parse trusted, generated SQL text (a reference or a cast) into an expression node."""
    return parser.parse_sql("SELECT " + sql)[0].stmt.targetList[0].val


def _copy(node):
    return parser.parse_sql("SELECT " + stream.RawStream()(node))[0].stmt.targetList[0].val


def compared_literals(frag: Fragment) -> dict[str, set]:
    """Constants compared with a column (`status = 'pending'`, `qty IN (1, 2)`): column -> values.

    Generated tests seed these values so that a condition matches some rows and not others.
    """
    found: dict[str, set] = {}
    for node in _walk(frag.expr):
        if not isinstance(node, ast.A_Expr) or not isinstance(node.lexpr, ast.ColumnRef):
            continue
        column = _column_name(node.lexpr)
        right = node.rexpr if isinstance(node.rexpr, tuple) else (node.rexpr,)
        for item in right:
            if isinstance(item, ast.A_Const) and column and not item.isnull:
                value = item.val
                found.setdefault(column, set()).add(getattr(value, "sval", None) or getattr(value, "ival", None)
                                                    or getattr(value, "fval", None) or getattr(value, "boolval", None))
    return {k: {v for v in vals if v is not None} for k, vals in found.items()}
