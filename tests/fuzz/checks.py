"""What counts as a failure, for one run of `specql validate` / `specql generate`.

Each check returns (failure class, detail) pairs; the class names are what `run_many.py`
counts and `known.py` lists. They are the promises of issue 8: exit 0 or 1 (never 2),
no traceback, bounded time and output, one located line per diagnostic.
"""

from __future__ import annotations

import re

import pglast
from pglast import ast

DIAG = re.compile(r"^[^\n]+:\d+:\d+: (error|warning): ")
SUMMARY = re.compile(r"^\d+ error\(s\); nothing was written\.$")
TIME_LIMIT = 5.0  # seconds per command
MAX_OUTPUT = 1_000_000  # characters of stdout + stderr per command (a 2,000-param file may warn 2,000 times)
MAX_LINE = 500  # characters per diagnostic line
# Characters that break a line on a terminal, or in a reader that splits on them (str.splitlines).
_BREAKING = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


def check_cli(command: str, code: int | None, stdout: str, stderr: str, elapsed: float) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    both = stdout + stderr
    if code == 2:
        out.append(("exit_2", _first_line(both)))
    elif code not in (0, 1):
        out.append((f"exit_{code}", _first_line(both)))
    if "Traceback" in both:
        out.append(("traceback", _first_line(both[both.index("Traceback"):])))
    if "internal error" in both and code != 2:
        out.append(("internal_error_text", _first_line(both[both.index("internal error"):])))
    if elapsed > TIME_LIMIT:
        out.append(("slow", f"{command} took {elapsed:.1f} s"))
    if len(both) > MAX_OUTPUT:
        out.append(("huge_output", f"{command} printed {len(both)} characters"))
    if code != 2:
        out.extend(check_diagnostics(stderr))
    return out


def check_diagnostics(stderr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in stderr.split("\n"):
        if not line:
            continue
        if not (DIAG.match(line) or SUMMARY.match(line)):
            out.append(("bad_diagnostic_line", _cut(line)))
        elif len(line) > MAX_LINE:
            out.append(("long_diagnostic", f"{len(line)} characters: {_cut(line)}"))
        elif _BREAKING.search(line):
            out.append(("control_char_in_diagnostic", _cut(line)))
    return _dedupe(out)


def check_sql_static(name: str, sql: str) -> list[tuple[str, str]]:
    """Without a server: the file parses, and no top-level statement touches the canary."""
    try:
        statements = pglast.parse_sql(sql)
    except Exception as exc:  # pglast.parser.ParseError, or a RecursionError on deep input
        return [("sql_unparseable", f"{name}: {type(exc).__name__}: {_cut(str(exc))}")]
    out = []
    for raw in statements:
        for node in _walk(raw.stmt):
            if isinstance(node, ast.RangeVar) and node.relname in ("fuzz_canary", "fuzz_pwned"):
                out.append(("injected_statement", f"{name}: {type(raw.stmt).__name__} on {node.relname}"))
            elif isinstance(node, ast.DropStmt) and "fuzz_canary" in repr(node.objects):
                out.append(("injected_statement", f"{name}: DROP of fuzz_canary"))
    return _dedupe(out)


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Node):
            yield n
            for attr in n.__slots__:
                stack.append(getattr(n, attr, None))
        elif isinstance(n, (list, tuple)):
            stack.extend(n)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return _cut(lines[0]) if lines else ""


def _cut(text: str, limit: int = 300) -> str:
    text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _dedupe(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for cls, detail in items:
        if cls not in seen:
            seen.add(cls)
            out.append((cls, detail))
    return out
