"""Load entity YAML keeping the line and column of every key and value.

The data comes back as plain dicts, lists and scalars; positions live beside it in a
`Document`, addressed by the path of keys and indexes that leads to a node, so the
validator can point at `entities/user.yaml:12:5` for any value it rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import re
from typing import Any

import yaml

from . import yamlbounds
from .diagnostics import Diagnostic, SpecError

PathKey = tuple  # e.g. ("patterns", 0, "where_condition")

# What no PostgreSQL text value can hold: NUL, and UTF-16 surrogates standing alone.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"
    block_indent: int | None = None  # for "|" / ">" scalars: the content's indentation
    start: int = 0  # character index of the node in the file
    end: int = 0


@dataclass
class Document:
    path: str  # as the user named it: diagnostics point here
    data: Any
    text: str
    source: str = ""  # stable name for generated output: the entity folder's name + the file's path in it
    value_marks: dict[PathKey, Mark] = field(default_factory=dict)
    key_marks: dict[PathKey, Mark] = field(default_factory=dict)

    def mark(self, path: PathKey) -> Mark:
        """Where the value at `path` starts; falls back to the nearest located parent."""
        path = tuple(path)
        while path not in self.value_marks and path:
            path = path[:-1]
        return self.value_marks.get(path, Mark(1, 1))

    def key_mark(self, path: PathKey) -> Mark:
        """Where the key naming `path` is written (for unknown-key errors)."""
        path = tuple(path)
        return self.key_marks.get(path) or self.mark(path)

    def fragment_mark(self, path: PathKey, offset: int) -> Mark:
        """Position of character `offset` inside the string scalar at `path`.

        YAML quoting, escapes, folding and block indentation all move characters away
        from where the loaded string has them; the scalar's source is re-read to map back.
        """
        mark = self.mark(path)
        value = self._value_at(path)
        if not isinstance(value, str) or not mark.end:
            return mark
        positions = scalar_positions(self.text, mark)
        if len(positions) != len(value) or not positions:
            return mark  # a form this mapper does not follow: the start is the honest answer
        offset = max(0, offset)
        index = positions[offset] if offset < len(positions) else positions[-1] + 1
        line = self.text.count("\n", 0, index)
        col = index - (self.text.rfind("\n", 0, index) + 1)
        return Mark(line + 1, col + 1)

    def _value_at(self, path: PathKey) -> Any:
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def diag(self, path: PathKey, message: str, *, key: bool = False, offset: int | None = None,
             severity: str = "error") -> Diagnostic:
        if offset is not None:
            mark = self.fragment_mark(path, offset)
        else:
            mark = self.key_mark(path) if key else self.mark(path)
        return Diagnostic(self.path, mark.line, mark.col, message, severity)


class _Builder:
    """Turns a composed YAML node tree into Python values, recording marks."""

    def __init__(self, doc: Document, problems: list[Diagnostic]):
        self.doc = doc
        self.problems = problems
        self.lines = doc.text.splitlines()
        self.scalars = yaml.SafeLoader("")

    def _mark(self, node: yaml.Node, parent_indent: int = 0) -> Mark:
        style = getattr(node, "style", None) or None  # libyaml writes a plain style as ""
        indent = None
        if style in ("|", ">"):
            indent = self._block_indent(node, parent_indent)
        return Mark(node.start_mark.line + 1, node.start_mark.column + 1, style, indent,
                    node.start_mark.index, node.end_mark.index)

    def _block_indent(self, node: yaml.Node, parent_indent: int) -> int | None:
        header = self.doc.text[node.start_mark.index:].split("\n", 1)[0]
        digits = [c for c in header[:3] if c.isdigit()]
        if digits:  # an explicit indentation indicator, relative to the parent
            return parent_indent + int(digits[0])
        for line in self.lines[node.start_mark.line + 1:]:
            if line.strip():
                return len(line) - len(line.lstrip(" "))
        return None

    def build(self, node: yaml.Node, path: PathKey, parent_indent: int = 0) -> Any:
        self.doc.value_marks[path] = self._mark(node, parent_indent)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(key_node, "mapping keys must be plain strings")
                    continue
                key = self.scalar(key_node)
                if not isinstance(key, str):
                    key = key_node.value  # a key as written: `~`, `null`, `true`, `1e3`
                if key in result:
                    self._problem(key_node, f"duplicate key '{key}'")
                    continue
                self.doc.key_marks[path + (key,)] = self._mark(key_node)
                result[key] = self.build(value_node, path + (key,), key_node.start_mark.column)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), node.start_mark.column) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        """The value of a scalar node; a value its tag cannot hold, or a NUL, is a located problem."""
        if node.tag == "tag:yaml.org,2002:timestamp":
            value = node.value  # dates stay text as written: PostgreSQL reads them, not Python
        else:
            try:
                value = self.scalars.construct_object(node)
            except yaml.constructor.ConstructorError as exc:
                self._problem(node, f"invalid YAML value: {exc.problem}")
                return node.value
            except (ValueError, TypeError, LookupError, OverflowError, ArithmeticError) as exc:
                self._problem(node, f"invalid YAML value: {node.tag.rsplit(':', 1)[-1]} {node.value!r} ({exc})")
                return node.value
        if isinstance(value, str) and _UNSTORABLE.search(value):
            self._unstorable_problem(node, value)
        elif isinstance(value, (bytes, bytearray)):
            self._problem(node, "invalid YAML value: binary data (!!binary) is not supported; write text")
            return node.value
        return value

    def _unstorable_problem(self, node: yaml.Node, value: str) -> None:
        """A NUL or a lone surrogate (a "\\ud800" escape): no PostgreSQL text can hold it, and
        no UTF-8 file or message can be written with it."""
        found = _UNSTORABLE.search(value)
        mark = self._mark(node)
        positions = scalar_positions(self.doc.text, mark)
        index = positions[found.start()] if len(positions) == len(value) else mark.start
        line = self.doc.text.count("\n", 0, index)
        col = index - (self.doc.text.rfind("\n", 0, index) + 1)
        message = ("a NUL character (\\0) is not allowed; PostgreSQL text cannot hold it" if found.group() == "\0"
                   else f"a lone surrogate (\\u{ord(found.group()):04x}) is not a character; "
                        f"PostgreSQL text cannot hold it")
        self.problems.append(Diagnostic(self.doc.path, line + 1, col + 1, message))

    def _problem(self, node: yaml.Node, message: str) -> None:
        mark = self._mark(node)
        self.problems.append(Diagnostic(self.doc.path, mark.line, mark.col, message))


def load_text(text: str, path: str) -> Document:
    """Parse one YAML document; raises SpecError with located problems."""
    doc = Document(path=path, data=None, text=text)
    if len(text) > yamlbounds.MAX_FILE_CHARS:
        raise SpecError([Diagnostic(path, 1, 1, f"the file has {len(text):,} characters; an entity file may have "
                                                f"at most {yamlbounds.MAX_FILE_CHARS:,}")])
    try:
        node = yamlbounds.compose(text)
    except yamlbounds.LimitError as exc:
        mark = exc.problem_mark
        raise SpecError([Diagnostic(path, mark.line + 1, mark.column + 1, exc.problem)]) from None
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_yaml_error(exc, text, path)]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        what = f"unacceptable character #x{exc.character:04X}" if isinstance(exc.character, int) else "bad input"
        raise SpecError([Diagnostic(path, line, col, f"invalid YAML: {what}: {exc.reason}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(path, 1, 1, f"invalid YAML: {exc}")]) from None
    if node is None:
        raise SpecError([Diagnostic(path, 1, 1, "the file is empty; an entity needs at least 'name' and 'fields'")])
    problems: list[Diagnostic] = []
    try:
        doc.data = _Builder(doc, problems).build(node, ())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        problems.append(Diagnostic(path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                                   f"invalid YAML value: {exc.problem}"))
    if problems:
        raise SpecError(problems)
    return doc


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based (line, col) of character `index` of `text`."""
    index = max(0, min(index, len(text)))
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def _yaml_error(exc: yaml.MarkedYAMLError, text: str, path: str) -> Diagnostic:
    """A located, one-line message for a YAML syntax error, pointing where the fix goes."""
    context = exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or context or "invalid YAML"
    if context.startswith("while scanning a quoted scalar") and exc.context_mark:
        mark, message = exc.context_mark, "this quoted string is missing its closing quote"
    elif context.startswith("while parsing a flow") and exc.context_mark and ("end" in message):
        opener = text[exc.context_mark.index] if exc.context_mark.index < len(text) else "["
        mark, message = exc.context_mark, f"this '{opener}' is never closed"
    elif context.startswith("while parsing a flow") and exc.problem_mark and message.endswith("found ':'"):
        # `input: {month: :target_month}`: in flow style ({...} or [...]) YAML reads a ':' at the start
        # of a plain value as a separator, so a :parameter there must be quoted.
        start = exc.problem_mark.index
        ref = re.match(r":[A-Za-z_][A-Za-z0-9_.]*", text[start:])
        shown_ref = ref.group(0) if ref else ":name"
        mark, message = exc.problem_mark, (f"{shown_ref} inside {{...}} or [...] must be quoted: write "
                                           f"'{shown_ref}' in quotes, or use block style (one key: value a line)")
    elif context.startswith("expected a single document"):
        message = f"{context}, {message}"
    else:
        opener = _unclosed_quote_before(text, exc.problem_mark.line if exc.problem_mark else 0)
        if opener is not None:
            line, col = opener
            return Diagnostic(path, line, col, "invalid YAML: this quoted string is missing its closing quote")
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Diagnostic(path, line, col, "invalid YAML: " + " ".join(message.split()))


_QUOTED_VALUE = re.compile(r"""^\s*(?:-\s+)?[^#'"]*:\s+(["'])""")


def _unclosed_quote_before(text: str, error_line: int) -> tuple[int, int] | None:
    """(line, col) of a `key: "...` value on or before error_line whose quote never closes on its line.

    A missing closing quote makes YAML read on into the next lines and fail there; the
    opener is where the user has to look.
    """
    for number, line in enumerate(text.splitlines()[:error_line + 1]):
        m = _QUOTED_VALUE.match(line)
        if not m:
            continue
        quote, rest = m.group(1), line[m.end():]
        closed = re.search(r'(?<!\\)"', rest) if quote == '"' else re.search(r"'(?!')", rest.replace("''", ""))
        if not closed:
            return number + 1, m.end()
    return None


def scalar_positions(text: str, mark: Mark) -> list[int]:
    """For each character of a string scalar's value, its index in the file text."""
    if mark.style in ("|", ">"):
        return _block_positions(text, mark)
    start, end = mark.start, mark.end
    if mark.style in ("'", '"'):
        start, end = start + 1, end - 1
    out: list[int] = []
    i = start
    while i < end:
        c = text[i]
        if c in " \t":
            j = i
            while j < end and text[j] in " \t":
                j += 1
            if j < end and text[j] == "\n":
                i = j  # trailing white space before a line break is not part of the value
                continue
            out.extend(range(i, j))
            i = j
        elif c == "\n":
            j, blank = i + 1, []
            while j < end and text[j] in " \t":
                j += 1
            while j < end and text[j] == "\n":
                blank.append(j)
                j += 1
                while j < end and text[j] in " \t":
                    j += 1
            out.extend(blank if blank else [i])  # one break folds to a space, n blank lines to n breaks
            i = j
        elif mark.style == "'" and c == "'":
            out.append(i)
            i += 2
        elif mark.style == '"' and c == "\\":
            nxt = text[i + 1] if i + 1 < end else ""
            if nxt == "\n":
                i += 2
                while i < end and text[i] in " \t":
                    i += 1
                continue
            out.append(i)
            i += {"x": 4, "u": 6, "U": 10}.get(nxt, 2)
        else:
            out.append(i)
            i += 1
    return out


def _block_positions(text: str, mark: Mark) -> list[int]:
    indent = mark.block_indent
    if indent is None:
        return []
    first = text.find("\n", mark.start) + 1
    out: list[int] = []
    pos = first
    while pos < mark.end:
        nl = text.find("\n", pos)
        nl = len(text) if nl < 0 else nl
        line = text[pos:nl]
        if line.strip() or len(line) > indent:
            out.extend(range(pos + indent, nl))
        out.append(nl)
        pos = nl + 1
    return out


def load_file(path: Path, display: str | None = None, source: str | None = None) -> Document:
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Diagnostic(shown, 1, 1, f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise SpecError([Diagnostic(shown, 1, 1, f"cannot read file: {exc.strerror}")]) from None
    doc = load_text(text, shown)
    doc.source = source or path.name
    return doc


def source_names(paths: list[str]) -> dict[Path, str]:
    """resolved file -> the name generated output calls it by, the same from any working
    folder: `entities/user.yaml` whether given `entities/`, `./entities` or an absolute path."""
    names: dict[Path, str] = {}
    for raw in paths:
        p = Path(raw).resolve()
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix in (".yaml", ".yml"):
                    names.setdefault(f.resolve(), (Path(p.name) / f.relative_to(p)).as_posix())
        elif p.is_file():
            names.setdefault(p, f"{p.parent.name}/{p.name}" if p.parent.name else p.name)
    return names


def collect_files(paths: list[str]) -> tuple[list[Path], list[Diagnostic]]:
    """Expand files and folders into a sorted list of *.yaml / *.yml files."""
    files: list[Path] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
            if not found:
                problems.append(Diagnostic(raw, 1, 1, "no *.yaml or *.yml files in this folder"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Diagnostic(raw, 1, 1, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems
