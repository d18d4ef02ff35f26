"""Diagnostics: located problems found while loading and validating entity files.

A diagnostic is one line, `path:line:col: severity: message`, which tools (editors, CI
annotations, grep) read line by line. Messages quote what the user wrote, and what the
user wrote may hold line breaks, control characters or a million characters; so every
diagnostic escapes control characters in its path and message and bounds its message,
whoever built it, and `shown()` is the way a message quotes a value: escaped and cut short.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

MAX_MESSAGE = 400  # characters of a message; a longer one is cut and ends with "…"
SHOWN = 60  # characters of a quoted value

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
# controls that would make a terminal show text in another order than it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def escape(text: str) -> str:
    """`text` with every control character written as an escape (a newline as \\n)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(0)) or (f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100
                                                            else f"\\u{ord(m.group(0)):04x}"), text)


def shown(value: Any, limit: int = SHOWN) -> str:
    """A value as a message quotes it: on one line, control characters escaped, at most
    `limit` characters of it followed by "…" when there is more."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return escape(text)
    return escape(text[:limit]) + "…"


@dataclass(frozen=True, order=True)
class Diagnostic:
    path: str
    line: int
    col: int
    message: str
    severity: str = field(default="error", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "path", escape(str(self.path)))
        object.__setattr__(self, "message", shown(self.message, MAX_MESSAGE))

    def format(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "message": self.message,
        }


class SpecError(Exception):
    """Raised when entity files are invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix when a close match exists, else ''."""
    if len(word) > 100:  # nothing is a close match, and difflib would index the whole word
        return ""
    matches = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
