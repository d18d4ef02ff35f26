"""Render the model to SQL text with the Jinja templates shipped in specql.templates."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

from . import __version__, contract
from .model import Entity, Operation
from .sqlnames import literal, qi


def _text_array(values) -> str:
    return "ARRAY[" + ", ".join(literal(v) for v in values) + "]::text[]" if values else "'{}'::text[]"


def _oneline(text: str) -> str:
    return " ".join(str(text).split())


def _block(text, width: int = 0) -> str:
    """A part of a routine that may write nothing, placed as `{% filter block(4) %}{{ part }}{% endfilter %}`:
    its lines indented by width and ended by a newline (a part ending in an empty line keeps
    it), or nothing at all, not even an empty line."""
    text = str(text)
    if not text.strip():
        return ""
    text = text.lstrip("\n").removesuffix("\n")
    return "\n".join((" " * width + line) if line.strip() else line for line in text.split("\n")) + "\n"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("specql.templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(qi=qi, lit=literal, text_array=_text_array, oneline=_oneline, block=_block)
    env.globals.update(version=__version__, contract=contract)
    return env


def search_path(op: Operation) -> str:
    """pg_catalog first so no object can shadow a built-in; pg_temp last, never implicit."""
    schemas = [op.schema] + ([op.target.schema] if op.target.schema != op.schema else [])
    return ", ".join(["pg_catalog"] + [qi(s) for s in schemas] + ["pg_temp"])


def render_runtime() -> str:
    return environment().get_template("sql/runtime.sql.j2").render()


def dollar_tag(op: Operation) -> str:
    """A dollar-quote tag that no user-written text of the operation contains.

    Conditions, literals, descriptions and names all end up inside the routine body;
    a body quoted with a tag they contain would end early.
    """
    texts = "\n".join(_strings(op, set()))
    tag, n = "$specql$", 0
    while tag[:-1] in texts:
        n += 1
        tag = f"$specql_{n}$"
    return tag


def _strings(value, seen: set[int]):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, seen)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k, seen)
            yield from _strings(v, seen)
    elif hasattr(value, "__dict__") and id(value) not in seen:
        seen.add(id(value))
        yield from _strings(vars(value), seen)


def render_entity(entity: Entity) -> str:
    template = environment().get_template("sql/entity.sql.j2")
    return _tidy(template.render(entity=entity, search_path_of=search_path, tag_of=dollar_tag))


def _tidy(sql: str) -> str:
    """Strip trailing spaces and runs of blank lines left by template branches."""
    lines = [line.rstrip() for line in sql.splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"
