"""Mutations that only exist as text: YAML aliases and bombs, nesting, tags, broken bytes.

A data tree cannot hold a billion-node alias bomb or an undefined alias, and a dumper
never writes a tab indent or invalid UTF-8; these are written directly.
"""

from __future__ import annotations

import os
from typing import Callable

from .payloads import PWNED_MARKER


def _deep_list(ch) -> str:
    depth = ch.choice([100, 999, 1001, 5000, 50000], "list depth")
    return "[" * depth + "1" + "]" * depth


def _deep_dict(ch) -> str:
    depth = ch.choice([100, 1000, 5000], "dict depth")
    return "{a: " * depth + "1" + "}" * depth


def _alias_bomb(ch) -> str:
    """A 'billion laughs': each level lists the previous one `width` times."""
    levels = ch.integer(2, 12, "bomb levels")
    width = ch.integer(2, 10, "bomb width")
    parts = ["&b0 [lol, lol]"]
    for i in range(1, levels):
        parts.append(f"&b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


def _alias_bomb_mapping(ch) -> str:
    levels = ch.integer(2, 10, "bomb levels")
    parts = ["&m0 {a: lol, b: lol}"]
    for i in range(1, levels):
        parts.append(f"&m{i} {{a: *m{i - 1}, b: *m{i - 1}, c: *m{i - 1}, d: *m{i - 1}}}")
    return "[" + ", ".join(parts) + "]"


RAW_VALUES: list[tuple[str, Callable]] = [
    ("deep_list", _deep_list),
    ("deep_dict", _deep_dict),
    ("alias_bomb", _alias_bomb),
    ("alias_bomb_mapping", _alias_bomb_mapping),
    ("alias_self_list", lambda ch: "&s [*s]"),
    ("alias_self_dict", lambda ch: "&s {a: *s}"),
    ("alias_undefined", lambda ch: "*nowhere"),
    ("merge_key", lambda ch: "{<<: &m {sql: 'NOW()'}, x: 1}"),
    ("python_tag", lambda ch: f'!!python/object/apply:os.system ["touch {PWNED_MARKER}"]'),
    ("custom_tag", lambda ch: "!custom x"),
    ("binary", lambda ch: "!!binary AAEC"),
    ("timestamp", lambda ch: "2001-12-14t21:59:43.10-05:00"),
    ("yaml11_bool", lambda ch: "yes"),
    ("octal", lambda ch: "0o777"),
    ("sexagesimal", lambda ch: "190:20:30"),
    ("dollar_quote_block", lambda ch: "|\n    $$ ; $specql$ */ --\n    x"),
]


# ----------------------------------------------------------------------------- whole-text mutations


def _insert_char(ch, b: bytes) -> bytes:
    char = ch.choice(["\x00", "\t", "\r", ":", "{", "[", "&", "*", "'", '"', "#", "\ufeff", "\x85", "\u2028",
                      "\\", "%", "@", "`", "|", ">", "!"], "char")
    at = ch.integer(0, len(b), "position")
    return b[:at] + char.encode("utf-8") + b[at:]


def _lines(b: bytes) -> list[bytes]:
    return b.split(b"\n")


def _delete_line(ch, b: bytes) -> bytes:
    lines = _lines(b)
    del lines[ch.integer(0, len(lines) - 1, "line")]
    return b"\n".join(lines)


def _duplicate_line(ch, b: bytes) -> bytes:
    lines = _lines(b)
    i = ch.integer(0, len(lines) - 1, "line")
    lines.insert(i, lines[i])
    return b"\n".join(lines)


def _tab_indent(ch, b: bytes) -> bytes:
    lines = _lines(b)
    i = ch.integer(0, len(lines) - 1, "line")
    lines[i] = b"\t" + lines[i].lstrip(b" ")
    return b"\n".join(lines)


TEXT_MUTATIONS: list[tuple[str, Callable]] = [
    ("insert_char", _insert_char),
    ("delete_line", _delete_line),
    ("duplicate_line", _duplicate_line),
    ("tab_indent", _tab_indent),
    ("truncate", lambda ch, b: b[:ch.integer(0, len(b), "cut")]),
    ("crlf", lambda ch, b: b.replace(b"\n", b"\r\n")),
    ("cr_only", lambda ch, b: b.replace(b"\n", b"\r")),
    ("bom", lambda ch, b: b"\xef\xbb\xbf" + b),
    ("utf16", lambda ch, b: b.decode("utf-8", "replace").encode("utf-16")),
    ("invalid_utf8", lambda ch, b: b + b"\n# \xff\xfe\xc0\n"),
    ("raw_nul_byte", lambda ch, b: b + b"\x00\n"),
    ("second_document", lambda ch, b: b + b"\n---\nname: other\n"),
    ("directive", lambda ch, b: b"%YAML 1.1\n---\n" + b),
    ("unknown_directive", lambda ch, b: b"%FOO bar\n---\n" + b),
    ("document_end", lambda ch, b: b"...\n" + b),
    ("empty", lambda ch, b: b""),
    ("only_comment", lambda ch, b: b"# nothing\n"),
    ("huge_line", lambda ch, b: b + b"\n# " + b"x" * 200_000 + b"\n"),
]

# Entity file names (their stem): they reach diagnostics and, as the source name, generated SQL.
FILENAMES: list[tuple[str, str]] = [
    ("newline_inject", "x\nDROP TABLE IF EXISTS public.fuzz_canary;\n--"),
    ("cr_inject", "x\rDROP TABLE IF EXISTS public.fuzz_canary;\r--"),
    ("psql_meta", f"x\n\\! touch {PWNED_MARKER}\n"),
    ("comment_open", "x -- DROP TABLE public.fuzz_canary;"),
    ("quote", "it's"),
    ("dollar", "$$x$specql$"),
    ("unicode", "名前"),
    ("space", " spaced name "),
    ("dash", "-v"),
    ("colon", "a:1:2: error: b"),
    ("long", "e" * 200),
    ("control", "a\x01\x1bb"),
    ("invalid_utf8", os.fsdecode(b"x\xffy")),  # Python reads such a name as "x\udcffy"
]
