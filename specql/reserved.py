"""Names the generated routines keep for themselves, read from the templates that declare them.

A generated routine runs its statements under `#variable_conflict use_column`, so a column
named like one of its variables (`_upto`, `_keys`, ...) would silently be read instead of the
variable, and an alias of its own statements (`_g`, `_source`) could be shadowed. The list of
such names is not kept by hand (a hand-kept copy drifted from the templates once): it is every
word of the form `_name` that the SQL templates write, so a new variable in a template is
refused as a column name the moment it exists.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_LOCAL = re.compile(r"(?<![A-Za-z0-9_$])_[a-z][a-z0-9_]*\b")


def _template_texts(folder) -> list[str]:
    texts = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            texts.extend(_template_texts(entry))
        elif entry.name.endswith(".sql.j2"):
            texts.append(entry.read_text("utf-8"))
    return texts


@lru_cache(maxsize=1)
def routine_locals() -> frozenset[str]:
    """Every `_name` the SQL templates write: variables, loop aliases, subquery aliases."""
    root = resources.files("specql.templates").joinpath("sql")
    return frozenset(m.group(0) for text in _template_texts(root) for m in _LOCAL.finditer(text))
