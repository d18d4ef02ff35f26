"""Load entity YAML keeping the line and column of every key and value.

The data comes back as plain dicts, lists and scalars; positions live beside it in a
`Document`, addressed by the path of keys and indexes that leads to a node, so the
validator can point at `entities/user.yaml:12:5` for any value it rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .diagnostics import Diagnostic, SpecError

PathKey = tuple  # e.g. ("patterns", 0, "where_condition")


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"
    block_indent: int | None = None  # for "|" / ">" scalars: the content's indentation


@dataclass
class Document:
    path: str
    data: Any
    text: str
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
        """Position of character `offset` inside the string scalar at `path`."""
        mark = self.mark(path)
        value = self._value_at(path)
        if not isinstance(value, str) or offset <= 0:
            if mark.style in ("|", ">") and mark.block_indent is not None:
                return Mark(mark.line + 1, mark.block_indent + 1)
            return mark
        before = value[: min(offset, len(value))]
        if mark.style == "|" and mark.block_indent is not None:
            lines = before.split("\n")
            return Mark(mark.line + len(lines), mark.block_indent + len(lines[-1]) + 1)
        if "\n" in before or mark.style == ">":
            return mark  # folded text: the start is the best honest answer
        quote = 1 if mark.style in ("'", '"') else 0
        return Mark(mark.line, mark.col + quote + len(before))

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

    def _mark(self, node: yaml.Node) -> Mark:
        style = getattr(node, "style", None)
        indent = None
        if style in ("|", ">"):
            indent = self._block_indent(node.start_mark.line)
        return Mark(node.start_mark.line + 1, node.start_mark.column + 1, style, indent)

    def _block_indent(self, indicator_line: int) -> int | None:
        for line in self.lines[indicator_line + 1:]:
            if line.strip():
                return len(line) - len(line.lstrip(" "))
        return None

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.doc.value_marks[path] = self._mark(node)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(key_node, "mapping keys must be plain strings")
                    continue
                key = self.scalars.construct_object(key_node)
                if not isinstance(key, str):
                    key = str(key) if not isinstance(key, bool) else key_node.value
                if key in result:
                    self._problem(key_node, f"duplicate key '{key}'")
                    continue
                self.doc.key_marks[path + (key,)] = self._mark(key_node)
                result[key] = self.build(value_node, path + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.scalars.construct_object(node)

    def _problem(self, node: yaml.Node, message: str) -> None:
        mark = self._mark(node)
        self.problems.append(Diagnostic(self.doc.path, mark.line, mark.col, message))


def load_text(text: str, path: str) -> Document:
    """Parse one YAML document; raises SpecError with located problems."""
    doc = Document(path=path, data=None, text=text)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError([Diagnostic(path, line, col, f"invalid YAML: {problem}")]) from None
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


def load_file(path: Path, display: str | None = None) -> Document:
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Diagnostic(shown, 1, 1, f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise SpecError([Diagnostic(shown, 1, 1, f"cannot read file: {exc.strerror}")]) from None
    return load_text(text, shown)


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
