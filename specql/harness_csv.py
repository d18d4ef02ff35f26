"""CSV loads for the generated tests of a `data_source: csv_file` import (SPEC §11).

Why its own module: a CSV import's records are lines of a file, staged by specql's own reader
(specql/csvimport.py) into the operation's staging table; the tests write such files (with a
header or without, in the operation's delimiter, with a line broken on purpose), stage them
as `specql run --csv` does, and call the routine with the load's staging_id.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

from .csvimport import stage_file
from .harness_records import _unique_value
from .harness_tables import sample_value


class CsvLoads:
    conn: psycopg.Connection
    f: dict

    def column(self, name: str) -> dict:  # pragma: no cover - provided by Targets
        raise NotImplementedError

    def reference_values(self, column: dict):  # pragma: no cover - provided by Seeding
        raise NotImplementedError

    def csv_columns(self) -> list[dict]:
        return [self.column(name) for name, _, _ in self.f["csv"]["mapping"]]

    def csv_rows(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        """n valid records (mapped column -> value): unique values for keys and unique columns,
        existing rows' keys for references, a sample of the type otherwise."""
        out = []
        columns = self.csv_columns()
        references = {c["name"]: self.reference_values(c) for c in columns if c["references"]}
        for i in range(start, start + n):
            row = {}
            for c in columns:
                if c["name"] in references:
                    row[c["name"]] = references[c["name"]][i % len(references[c["name"]])]
                elif c["primary_key"] or c["unique"] or c["name"] in self.f["conflict_columns"]:
                    row[c["name"]] = _unique_value(c, i)
                else:
                    row[c["name"]] = sample_value(c["sql_type"], i)
            out.append(row)
        return out

    def csv_text(self, rows: list[dict], broken: dict[int, str] | None = None) -> str:
        """The file of these records: header (when the operation has one), one line each, every
        value quoted (a value a test wants NULL is None: an unquoted empty field); `broken`
        replaces the line of record i (0-based) with the given text."""
        csv = self.f["csv"]
        d = csv["delimiter"]
        mapping = csv["mapping"]
        width = max([p or 0 for _, _, p in mapping] + [len(mapping)])
        slots: list[str | None] = [None] * width
        headers = {}
        free = iter(i for i in range(width) if all((p or 0) - 1 != i for _, _, p in mapping))
        for name, header, position in mapping:
            if position is None:
                index = next(free)
                slots[index] = name
                headers[index] = header
            else:
                slots[position - 1] = name
        lines = []
        if csv["has_header"]:
            lines.append(d.join(_quote(headers.get(i, f"unused_{i + 1}")) for i in range(width)))
        for i, row in enumerate(rows):
            if broken and i in broken:
                lines.append(broken[i])
                continue
            lines.append(d.join("" if slot is None or row.get(slot) is None else _quote(_text(row[slot]))
                                for slot in slots))
        return "\n".join(lines) + "\n"

    def csv_broken_line(self) -> str:
        """A line with one field more than the file's records have (a wrong field count)."""
        mapping = self.f["csv"]["mapping"]
        width = max([p or 0 for _, _, p in mapping] + [len(mapping)])
        return self.f["csv"]["delimiter"] * width

    def stage_csv(self, rows: list[dict], broken: dict[int, str] | None = None) -> str:
        """Stage the file of these records as `specql run --csv` does; its staging_id."""
        with tempfile.TemporaryDirectory(prefix="specql-csv-") as tmp:
            path = Path(tmp) / "load.csv"
            path.write_text(self.csv_text(rows, broken), encoding="utf-8")
            return stage_file(self.conn, self.f["csv"], path).staging_id

    def stage_csv_with_gaps(self, rows: list[dict], broken: dict[int, str] | None = None) -> str:
        """Stage the file of these records, then number them as psql's \\copy may (its identity
        skips after a rolled-back insert): the i-th record _record 3i + i % 2 past the load's
        last number, gaps of 2 and 4, each with its file line kept in _line."""
        staging_id = self.stage_csv(rows, broken)
        csv = self.f["csv"]
        table = psycopg.sql.Identifier(csv["schema"], csv["staging"])
        with self.conn.transaction():
            # New numbers all above the old ones: no row takes a number another still has.
            self.conn.execute(psycopg.sql.SQL(
                "UPDATE {0} SET _line = coalesce(_line, _record + %s), "
                "_record = _record * 3 + _record %% 2 + (SELECT max(_record) FROM {0} WHERE _staging_id = %s) "
                "WHERE _staging_id = %s").format(table), (self.header_lines(), staging_id, staging_id))
        return staging_id

    def header_lines(self) -> int:
        return 1 if self.f["csv"]["has_header"] else 0


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'
