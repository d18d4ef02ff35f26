"""Compose YAML with bounds, so that no entity file can exhaust time, memory or the stack.

PyYAML composes an alias as a second reference to the node it names, so a 500-byte file
of nested aliases (a "billion laughs") is a tiny graph that becomes hundreds of millions
of values once walked; an alias used inside its own anchor is a cycle; and the composer
recurses once per nesting level, so a value nested 1,000 deep raises RecursionError.
The loader below measures every node as it is composed (its size and depth once aliases
are expanded, computed bottom-up from the children, so the cost stays linear in the
file) and refuses, at the node's position, whatever would cross a bound. The walk that
later builds Python values from the graph is then bounded by the same numbers.
"""

from __future__ import annotations

import yaml

try:
    from yaml.cyaml import CParser  # libyaml, when PyYAML was built with it
except ImportError:  # pragma: no cover
    CParser = None

MAX_DEPTH = 64  # nesting levels; an entity file needs about ten
MAX_EXPANDED = 100_000  # values an alias may add beyond the file's own size
MAX_FILE_CHARS = 1_000_000  # entity files are a few KB; a megabyte of YAML already takes seconds


class LimitError(yaml.composer.ComposerError):
    """A bound crossed while composing; carries the mark of the node at fault."""

    def __init__(self, message: str, mark: yaml.Mark):
        super().__init__(problem=message, problem_mark=mark)


class _Bounds:
    """A composer that refuses recursive aliases, deep nesting and alias bombs (a mixin over Composer)."""

    def _start_bounds(self, text: str) -> None:
        self.budget = MAX_EXPANDED + len(text)
        self._depth = 0
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise LimitError(f"the alias *{event.anchor} is used inside the value it names "
                                 "(a recursive structure)", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(f"values are nested more than {MAX_DEPTH} levels deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        self._measure(node)
        return node

    def _measure(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode):
            self._measured[id(node)] = (1, 1)
            return
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [child for pair in node.value for child in pair]
        size, depth = 1, 0
        for child in children:
            child_size, child_depth = self._measured.get(id(child), (1, 1))
            size += child_size
            depth = max(depth, child_depth)
        depth += 1
        if depth > MAX_DEPTH:
            raise LimitError(f"values are nested more than {MAX_DEPTH} levels deep (through an alias)",
                             node.start_mark)
        if size > self.budget:
            raise LimitError(f"this value expands, through its aliases, to more than {self.budget:,} values; "
                             "write it out or use fewer aliases", node.start_mark)
        self._measured[id(node)] = (size, depth)


class BoundedLoader(_Bounds, yaml.SafeLoader):
    """PyYAML's pure-Python loader, bounded: slow, but its errors say the most."""

    def __init__(self, text: str):
        super().__init__(text)
        self._start_bounds(text)


if CParser is not None:
    class FastBoundedLoader(_Bounds, yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor,
                            yaml.resolver.Resolver):
        """libyaml's parser (about ten times faster) under the same bounded composer."""

        def __init__(self, text: str):
            CParser.__init__(self, text)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start_bounds(text)
else:  # pragma: no cover - PyYAML built without libyaml
    FastBoundedLoader = None


def compose(text: str) -> yaml.Node | None:
    """The node graph of the single YAML document in `text` (None when empty).

    libyaml reads the file when it can; when it finds a problem, the pure-Python parser
    reads it again, because its messages are the ones the diagnostics are built from.
    """
    if FastBoundedLoader is not None:
        try:
            loader = FastBoundedLoader(text)
        except ValueError:  # text libyaml cannot encode (a lone surrogate): the reader below says where
            loader = None
        try:
            if loader is not None:
                return loader.get_single_node()
        except LimitError:
            raise
        except yaml.YAMLError:
            pass
        finally:
            if loader is not None:
                loader.dispose()
    loader = BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()
