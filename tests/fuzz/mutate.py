"""Mutate a real entity file into a hostile one, and say which mutations were made.

Why a `Chooser`: the CI test draws every decision through Hypothesis (so failures shrink
to a few decisions and replay from a seed) while `run_many.py` needs thousands of files a
minute from a plain `random.Random`. Both drive the same mutation code.

A case's `kinds` name what was done as `<payload class>@<field class>` (for example
`newline_inject@operation`); `known.py` matches open defects against these names.
"""

from __future__ import annotations

import copy
import datetime
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from . import payloads as P
from .rawtext import RAW_VALUES, TEXT_MUTATIONS, FILENAMES

REPO = Path(__file__).resolve().parents[2]
DATA_KEYS = {"update_data", "insert_data", "upsert_data"}


class Chooser:
    """Where every random decision comes from."""

    def choice(self, items: Sequence[Any], label: str = "") -> Any:
        raise NotImplementedError

    def integer(self, lo: int, hi: int, label: str = "") -> int:
        raise NotImplementedError

    def chance(self, probability: float, label: str = "") -> bool:
        return self.integer(0, 999, label) < int(probability * 1000)


class RandomChooser(Chooser):
    def __init__(self, rnd: random.Random):
        self.rnd = rnd

    def choice(self, items, label=""):
        return items[self.rnd.randrange(len(items))]

    def integer(self, lo, hi, label=""):
        return self.rnd.randint(lo, hi)


class DrawChooser(Chooser):
    """Decisions drawn from Hypothesis `data` (st.data()): they shrink towards the first item."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def choice(self, items, label=""):
        return items[self.data.draw(self.st.integers(0, len(items) - 1), label=label or None)]

    def integer(self, lo, hi, label=""):
        return self.data.draw(self.st.integers(lo, hi), label=label or None)


@dataclass(frozen=True)
class Seed:
    name: str  # e.g. entities/user.yaml
    # repr=False: Hypothesis pretty-prints test arguments, and an alias-bomb seed printed
    # whole is exponential (it stalled the CI test).
    text: str = field(repr=False)
    data: Any = field(repr=False)  # None when the text is not loadable YAML (then only text mutations apply)
    loadable: bool = True


@dataclass
class FuzzCase:
    seed: str
    filename: str  # the entity file's name (without folder)
    content: bytes
    kinds: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.seed} -> {self.filename!r}: {', '.join(self.kinds) or 'unchanged'}"


def load_seeds(repo: Path = REPO) -> list[Seed]:
    files = sorted((repo / "entities").glob("*.yaml")) + sorted((repo / "tests" / "bad_entities").glob("*.yaml"))
    seeds = []
    for path in files:
        text = path.read_text("utf-8")
        try:
            data, ok = yaml.safe_load(text), True
        except yaml.YAMLError:
            data, ok = None, False
        seeds.append(Seed(path.relative_to(repo).as_posix(), text, data, ok))
    return seeds


# ----------------------------------------------------------------------------- the data tree


def _nodes(data: Any, path: tuple = ()) -> list[tuple[tuple, Any, Any, bool]]:
    """(path, container, key, is_key) for every value and mapping key under `data` (not the root)."""
    out: list[tuple[tuple, Any, Any, bool]] = []
    seen: set[int] = set()

    def walk(node, path):
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, dict):
            for k, v in list(node.items()):
                out.append((path + (k,), node, k, True))
                out.append((path + (k,), node, k, False))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                out.append((path + (i,), node, i, False))
                walk(v, path + (i,))

    walk(data, path)
    return out


def field_class(path: tuple, is_key: bool) -> str:
    """What kind of field a node is, by the keys leading to it (see the module docstring)."""
    keys = [p for p in path if isinstance(p, str)]
    if is_key:
        parent = [p for p in path[:-1] if isinstance(p, str)]
        last = parent[-1] if parent else ""
        if not parent:
            return "top_key"
        return {"fields": "field_name", "params": "param_name", "field_mapping": "mapping_name"}.get(
            last, "column_name" if last in DATA_KEYS else ("pattern_key" if last == "patterns" else f"{last}.key"))
    if not keys:
        return "root"
    if keys[0] == "fields":
        if len(path) == 2:
            return "field_type"
        return f"field_{keys[-1]}" if len(keys) >= 3 else "field_type"
    for special in ("preconditions", "notification_channels", "conflict_target", "params", "field_mapping",
                    "validation_rules", "steps"):
        if special in keys:
            return special
    if DATA_KEYS & set(keys):
        return "value"
    return str(keys[-1])


def _set(container, key, value) -> None:
    container[key] = value


def _rename_key(container: dict, key, new) -> None:
    items = [(new if k == key else k, v) for k, v in container.items()]
    container.clear()
    container.update(items)


def _patterns(data) -> list[dict]:
    if isinstance(data, dict) and isinstance(data.get("patterns"), list):
        return [p for p in data["patterns"] if isinstance(p, dict)]
    return []


def _payload_for(ch: Chooser, fclass: str) -> tuple[str, Any]:
    if fclass in P.SQL_KEYS | {"where_condition", "preconditions"} and ch.chance(0.6, "sql payload"):
        return ch.choice(P.SQL_FRAGMENTS, "sql fragment")
    if fclass in P.INTERVAL_KEYS and ch.chance(0.6, "interval payload"):
        return ch.choice(P.INTERVALS, "interval")
    if fclass in P.NUMBER_KEYS and ch.chance(0.6, "number payload"):
        return ch.choice(P.NUMBERS, "number")
    return ch.choice(P.STRINGS, "string payload")


# ----------------------------------------------------------------------------- data mutations
# Each takes (chooser, data, raw) and returns a kind, or None when it found nothing to do.
# `raw` maps placeholder tokens to YAML text that replaces them after dumping.


def m_replace_string(ch: Chooser, data, raw) -> str | None:
    nodes = [n for n in _nodes(data) if isinstance(n[2] if n[3] else n[1][n[2]], str)]
    if not nodes:
        return None
    path, container, key, is_key = ch.choice(nodes, "string node")
    fclass = field_class(path, is_key)
    pclass, value = _payload_for(ch, fclass)
    if is_key:
        if value in container:
            return None
        _rename_key(container, key, value)
    else:
        _set(container, key, value)
    return f"{pclass}@{fclass}"


# Fields whose value is the user's own text or names: where hostile strings may well be valid.
USER_TEXT = {"description", "notification_message", "value", "notification_channels", "name", "schema", "table",
             "operation", "field_name", "column_name", "log_table", "metrics_table", "conflict_target"}


def m_replace_user_text(ch: Chooser, data, raw) -> str | None:
    """Like m_replace_string, restricted to USER_TEXT fields (for cases meant to generate)."""
    nodes = [n for n in _nodes(data) if isinstance(n[2] if n[3] else n[1][n[2]], str)
             and field_class(n[0], n[3]) in USER_TEXT]
    if not nodes:
        return None
    path, container, key, is_key = ch.choice(nodes, "user text node")
    pclass, value = ch.choice(P.STRINGS, "string payload")
    if is_key:
        if value in container:
            return None
        _rename_key(container, key, value)
    else:
        _set(container, key, value)
    return f"{pclass}@{field_class(path, is_key)}"


def m_delete_key(ch: Chooser, data, raw) -> str | None:
    nodes = [n for n in _nodes(data) if n[3]]
    if not nodes:
        return None
    path, container, key, _ = ch.choice(nodes, "key to delete")
    del container[key]
    return f"delete@{field_class(path, False)}"


_TYPE_VALUES: list[tuple[str, Callable[[], Any]]] = [
    ("int", lambda: 7), ("float", lambda: 2.5), ("bool", lambda: False), ("null", lambda: None),
    ("empty_list", list), ("empty_dict", dict), ("list", lambda: ["a", 1]), ("dict", lambda: {"a": {"b": 1}}),
    ("date", lambda: datetime.date(2024, 2, 29)), ("datetime", lambda: datetime.datetime(2024, 1, 1, 12)),
    ("bytes", lambda: b"\x00\xff"), ("set", lambda: {"a", "b"}), ("huge_int", lambda: 10**40),
    ("empty_string", str), ("inf", lambda: float("inf")),
]


def m_change_type(ch: Chooser, data, raw) -> str | None:
    nodes = [n for n in _nodes(data) if not n[3]]
    if not nodes:
        return None
    path, container, key, _ = ch.choice(nodes, "node to retype")
    tname, make = ch.choice(_TYPE_VALUES, "new type")
    _set(container, key, make())
    return f"type_{tname}@{field_class(path, False)}"


_OPTIONAL_PATTERN_KEYS = ["where_condition", "preconditions", "timeout", "heartbeat_interval", "log_table",
                          "metrics_table", "params", "conflict_target", "notification_channels",
                          "notification_message", "description", "operation", "data_source", "batch_size",
                          "max_records", "max_errors", "progress_notification_interval"]
_OPTIONAL_TOP_KEYS = ["schema", "table", "description", "primary_key", "name"]


def m_add_key(ch: Chooser, data, raw) -> str | None:
    """Set a key the schema knows (present or not) to a payload: reaches fields seeds lack."""
    targets = _patterns(data)
    top = isinstance(data, dict)
    if not targets and not top:
        return None
    if top and (not targets or ch.chance(0.3, "top level")):
        target, key = data, ch.choice(_OPTIONAL_TOP_KEYS, "top key")
    else:
        target, key = ch.choice(targets, "pattern"), ch.choice(_OPTIONAL_PATTERN_KEYS, "pattern key")
    pclass, value = _payload_for(ch, key)
    if key == "preconditions" or key == "notification_channels":
        value = [value]
    elif key == "params":
        if ch.chance(0.5, "param name or type"):
            value = {value if isinstance(value, str) else "p": "text"}
        else:
            value = {"p": value}
    elif key == "notification_message":
        target["notify_on_completion"] = True
    if key == "notification_channels":
        target["notify_on_completion"] = True
    target[key] = value
    return f"{pclass}@{key}"


def m_sql_value(ch: Chooser, data, raw) -> str | None:
    """An SQL fragment where SQL is expected: a condition, a precondition, a {sql: ...} value."""
    pats = _patterns(data)
    if not pats:
        return None
    pat = ch.choice(pats, "pattern")
    sclass, fragment = ch.choice(P.SQL_FRAGMENTS + P.STRINGS, "sql fragment")
    where = ch.choice(["where_condition", "preconditions", "value", "field_default"], "sql place")
    if where == "where_condition":
        pat["where_condition"] = fragment
    elif where == "preconditions":
        pat["preconditions"] = [fragment]
    elif where == "value":
        data_keys = [k for k in DATA_KEYS if isinstance(pat.get(k), dict) and pat[k]]
        if not data_keys:
            return None
        values = pat[ch.choice(sorted(data_keys), "data key")]
        values[ch.choice(sorted(values, key=str), "column")] = {"sql": fragment}
    else:
        fields = data.get("fields")
        if not isinstance(fields, dict) or not fields:
            return None
        name = ch.choice(sorted(fields, key=str), "field")
        ftype = fields[name] if isinstance(fields[name], str) else "text"
        fields[name] = {"type": ftype, "default": {"sql": fragment}}
    return f"{sclass}@{where}"


def m_field_type(ch: Chooser, data, raw) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict) or not data["fields"]:
        return None
    name = ch.choice(sorted(data["fields"], key=str), "field")
    tclass, value = ch.choice(P.FIELD_TYPES, "field type")
    data["fields"][name] = value
    return f"{tclass}@field_type"


def m_many(ch: Chooser, data, raw) -> str | None:
    """Thousands of fields, hundreds of operations or params: PostgreSQL's limits."""
    if not isinstance(data, dict):
        return None
    what = ch.choice(["fields", "patterns", "params"], "many what")
    n = ch.choice([100, 1601, 2000], "how many")
    if what == "fields":
        fields = data.setdefault("fields", {}) if isinstance(data.get("fields", {}), dict) else None
        if fields is None:
            return None
        for i in range(n):
            fields[f"f{i}"] = "integer"
    elif what == "patterns":
        pats = _patterns(data)
        if not pats:
            return None
        n = min(n, 100)  # 100 routines take ~1.5 s; more only repeats the same code
        # Copy a snapshot: pats[0] may hold the patterns list itself (an earlier m_share), and
        # copying it after each append would double the file every time.
        template = copy.deepcopy(pats[0])
        for i in range(n):
            extra = copy.deepcopy(template)
            if isinstance(extra.get("params"), dict) and len(extra["params"]) > 100:
                del extra["params"]
            extra["operation"] = f"{extra.get('operation', 'op')}_{i}"
            data["patterns"].append(extra)
    else:
        pats = _patterns(data)
        if not pats:
            return None
        pats[0]["params"] = {f"p{i}": "text" for i in range(n)}
    return f"many_{what}_{n}"


def m_share(ch: Chooser, data, raw) -> str | None:
    """The same object twice (the dumper writes an anchor and an alias), or inside itself."""
    nodes = [n for n in _nodes(data) if not n[3]]
    if len(nodes) < 2:
        return None
    src_path, src_c, src_k, _ = ch.choice(nodes, "alias source")
    dst_path, dst_c, dst_k, _ = ch.choice(nodes, "alias target")
    value = src_c[src_k]
    if ch.chance(0.3, "self reference") and isinstance(value, (list, dict)):
        if isinstance(value, list):
            value.append(value)
        else:
            value["self"] = value
        return f"alias_self_data@{field_class(src_path, False)}"
    _set(dst_c, dst_k, value)
    return f"alias_share@{field_class(dst_path, False)}"


def m_raw_value(ch: Chooser, data, raw) -> str | None:
    """A value written as YAML text: deep nesting, alias bombs, self references, tags."""
    nodes = [n for n in _nodes(data) if not n[3]]
    if not nodes:
        return None
    path, container, key, _ = ch.choice(nodes, "raw target")
    name, make = ch.choice(RAW_VALUES, "raw value")
    token = f"__FUZZRAW{len(raw)}__"
    raw[token] = make(ch)
    _set(container, key, token)
    return f"raw_{name}@{field_class(path, False)}"


DATA_MUTATIONS = [m_replace_string, m_replace_string, m_replace_user_text, m_sql_value, m_add_key, m_add_key, m_delete_key,
                  m_change_type, m_field_type, m_many, m_share, m_raw_value, m_raw_value]


# ----------------------------------------------------------------------------- putting it together


def dump(data: Any, raw: dict[str, str], ch: Chooser) -> str:
    flow = ch.chance(0.1, "flow style")
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=flow, width=10**9)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only an escape can carry it
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False, default_flow_style=flow, width=10**9)
    for token, value in raw.items():
        text = text.replace(token, value)
    return text


def make_case(ch: Chooser, seeds: list[Seed], *, mutations=None, text: bool = True,
              good_bias: float = 0.6) -> FuzzCase:
    """One mutated file. `mutations` narrows the data mutations; `text=False` keeps the YAML
    well formed (no whole-text mutations), for tests that want generate to succeed more often."""
    mutations = mutations or DATA_MUTATIONS
    # The example entities are where generate succeeds and SQL gets applied: favour them.
    good = [s for s in seeds if s.name.startswith("entities/")]
    seed = ch.choice(good if good and ch.chance(good_bias, "good seed") else seeds, "seed")
    kinds: list[str] = []
    if seed.loadable and (not text or ch.chance(0.85, "data mutations")):
        data = copy.deepcopy(seed.data)
        raw: dict[str, str] = {}
        for _ in range(ch.choice([1, 1, 1, 2, 2, 3] if text else [1, 1, 2], "data mutation count")):
            kind = ch.choice(mutations, "data mutation")(ch, data, raw)
            if kind:
                kinds.append(kind)
        body = dump(data, raw, ch)
    else:
        body = seed.text
    content = body.encode("utf-8", "surrogatepass")
    if text and (not kinds or ch.chance(0.15, "text mutation")):
        name, mutate = ch.choice(TEXT_MUTATIONS, "text mutation")
        content = mutate(ch, content)
        kinds.append(f"text_{name}")
    filename = Path(seed.name).name
    if ch.chance(0.08, "file name"):
        fclass, stem = ch.choice(FILENAMES, "file name")
        filename = f"{stem}.yaml"
        kinds.append(f"fname_{fclass}")
    return FuzzCase(seed.name, filename, content, kinds)


# For tests that apply SQL: hostile strings in fields that stay valid, and new optional keys.
APPLY_MUTATIONS = [m_replace_user_text, m_replace_user_text, m_replace_user_text, m_add_key, m_sql_value]


def sweep_cases(seeds: list[Seed]) -> list[FuzzCase]:
    """Every string payload in every user-text field of every example entity, every file
    name, and every SQL fragment in every SQL place: the systematic half of a big run."""
    cases = []
    for seed in (s for s in seeds if s.name.startswith("entities/") and s.loadable):
        probe = copy.deepcopy(seed.data)
        targets = [(n[0], n[3]) for n in _nodes(probe) if isinstance(n[2] if n[3] else n[1][n[2]], str)
                   and field_class(n[0], n[3]) in USER_TEXT]
        for path, is_key in targets:
            for pclass, value in P.STRINGS:
                data = copy.deepcopy(seed.data)
                node = data
                for part in path[:-1]:
                    node = node[part]
                if is_key:
                    if value in node:
                        continue
                    _rename_key(node, path[-1], value)
                else:
                    node[path[-1]] = value
                text = dump(data, {}, _NoFlow())
                cases.append(FuzzCase(seed.name, Path(seed.name).name, text.encode("utf-8", "surrogatepass"),
                                      [f"{pclass}@{field_class(path, is_key)}"]))
        for fclass, stem in FILENAMES:
            cases.append(FuzzCase(seed.name, f"{stem}.yaml", seed.text.encode("utf-8"), [f"fname_{fclass}"]))
    return cases


class _NoFlow(Chooser):
    def choice(self, items, label=""):
        return items[0]

    def integer(self, lo, hi, label=""):
        return lo

    def chance(self, probability, label=""):
        return False
