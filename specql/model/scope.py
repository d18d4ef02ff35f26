"""The parameters of one operation: declared types, types inferred from use, and their roles.

`:name` may appear in values, conditions and preconditions. Its type comes from `params`
when declared, else from where it is used (`col = :p` -> the column's type, `col = ANY(:p)`
-> an array of it, a value assigned to a column -> that column's type). The first use fixes
the argument's position; a use of another type than the first is an error. Roles and the
constants conditions compare with are kept for the generated tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..diagnostics import did_you_mean
from ..sqlnames import SQL_TYPES, qi
from .names import check_identifier

_PARAM_TYPE = re.compile(r"^([a-z]+)(\[\])?$")


@dataclass
class Param:
    name: str
    sql_type: str

    @property
    def ident(self) -> str:
        return qi(self.name)


class Scope:
    """What an operation's SQL has said about its parameters so far."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.types: dict[str, tuple[str, tuple, int | None]] = {}  # name -> (sql type, where, offset)
        self.order: list[str] = []
        self.first_site: dict[str, tuple[tuple, int | None]] = {}
        self.declared: dict[str, str] = {}
        self.bad_declarations: set[str] = set()
        self.record_alias: str | None = None
        self.record_alias_at: tuple | None = None
        self.roles: dict[str, tuple[str, str | None]] = {}
        self.compared: dict[str, set] = {}

    def declare(self, params: dict) -> None:
        """`params: {name: type}`: declared types win over inference."""
        for pname, ptype in params.items():
            ppath = self.ctx.at("params", pname)
            m = _PARAM_TYPE.match(ptype.strip().lower())
            base = m and (SQL_TYPES.get(m.group(1)) or (m.group(1) if m.group(1) == "interval" else None))
            if not m or not base:
                self.ctx.error(ppath, f"unknown parameter type '{ptype}'"
                                      f"{did_you_mean(ptype, list(SQL_TYPES) + ['interval'])}"
                                      f" (use a field type, optionally with [])")
                self.bad_declarations.add(pname)
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", pname):
                self.ctx.error(ppath, f"parameter name '{pname}' must be a plain identifier", key=True)
                continue
            self.declared[pname] = base + (m.group(2) or "")
            self.types[pname] = (self.declared[pname], ppath, None)

    def note(self, name: str, sql_type: str | None, path: tuple, offset: int | None) -> None:
        if name not in self.order:
            self.order.append(name)
            self.first_site[name] = (path, offset)
        if sql_type is None:
            return
        known = self.types.get(name)
        if known and known[0] != sql_type:
            self.ctx.error(path, f"parameter :{name} is used as {sql_type} here but as {known[0]} elsewhere; "
                                 f"declare its type under params", offset=offset)
            return
        self.types.setdefault(name, (sql_type, path, offset))

    def note_record(self, alias: str, path: tuple, offset: int | None) -> None:
        if self.record_alias is None:
            self.record_alias, self.record_alias_at = alias, path
        elif alias != self.record_alias:
            self.ctx.error(path, f":{alias}.… names a different data_source element than :{self.record_alias}.…; "
                                 f"use one name for the current element", offset=offset)

    def site(self, name: str) -> tuple:
        if name in self.types:
            return self.types[name][1]
        return self.ctx.at("operation")

    def params(self, requires_confirmation: bool) -> list[Param]:
        """Every parameter with its type, in order of first use; errors for the untyped and the reserved."""
        ctx = self.ctx
        params: list[Param] = []
        for pname in self.order:
            if pname in self.declared:
                params.append(Param(pname, self.declared[pname]))
            elif pname in self.types:
                params.append(Param(pname, self.types[pname][0]))
            elif pname not in self.bad_declarations:
                site, offset = self.first_site[pname]
                ctx.error(site, f"cannot infer the type of parameter :{pname}; "
                                f"declare it under params (e.g. params: {{{pname}: text}})", offset=offset)
        for pname in self.declared:
            if pname not in self.order:
                ctx.warn(ctx.at("params", pname), f"parameter '{pname}' is declared but never used", key=True)
        for p in params:
            if p.name.startswith("_"):
                ctx.error(self.site(p.name), f"parameter names starting with '_' are reserved (:{p.name})")
            if p.name in ("batch_size", "resume", "result") or (p.name == "confirm" and requires_confirmation):
                ctx.error(self.site(p.name), f"parameter name '{p.name}' is reserved for the routine's "
                                             f"own argument")
            check_identifier(ctx.doc, self.site(p.name), p.name, "parameter name", ctx.problems)
        return params

    def roles_of(self, params: list[Param]) -> dict[str, tuple[str, str | None]]:
        return {p.name: self.roles.get(p.name, ("other", None)) for p in params}

    def compared_values(self) -> dict[str, list]:
        return {k: sorted(v, key=str) for k, v in sorted(self.compared.items())}
