"""`specql run OP --csv FILE` (SPEC §11): stream a CSV file into the operation's staging table
with COPY, call the routine on the staged rows, report what was imported and rejected.

The file is read once, line by line (never whole): each record is split by COPY's CSV rules
(a field is quoted with `"`, a quote inside it doubled; an unquoted empty field is NULL, a
quoted empty one an empty string; a quoted field may hold the delimiter and line breaks),
and the mapped fields are re-emitted, in staging column order, to one `COPY ... FROM STDIN
(FORMAT csv)`. A record that cannot be staged as fields (wrong field count, a quote never
closed, bytes that are not UTF-8, a NUL byte) is staged with its reason (`_rejected`), so the
routine writes its error row in order with the others. Every staged row carries its record
number (`_record`, dense from 1: what batches and a resume count) and the file line it starts
on (`_line`, 1-based, the header included).

Lines without quotes (most of them) are split with str.split and written back as they are.
"""

from __future__ import annotations

import gzip
import json
import operator
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from .run import RunError
from .staging import after_the_run, staged_load, staging_connection, write_rejects_file

COPY_CHUNK = 1 << 20  # bytes sent to COPY at a time
BLOCK = 1 << 20  # bytes of the file read at a time past its first records
# Bytes of one committed COPY when the routine follows the staging: the routine sees a chunk's
# rows only when it commits, so the last chunk is imported after the staging ends (small chunks,
# a short tail; each commit costs a few milliseconds).
STREAM_CHUNK = 2 << 20
MAX_RECORD_CHARS = 256 << 20  # a record longer than this is rejected (a quote never closed, most likely)
STAGING_COLUMNS = ("_record", "_line", "_rejected", "_rejected_kind", "_raw")


@dataclass
class Record:
    """One record of the file: its number, the line it starts on, its fields as (value,
    quoted) pairs (None when it could not be split), and why it is rejected (None: it is not)."""

    number: int
    line: int
    text: str
    fields: list | None = None
    reason: str | None = None
    kind: str | None = None


class _Gunzipped(gzip.GzipFile):
    """gzip input decompressed from the file already open, and closed with it: reopening the
    file by name would read a pipe (`--csv /dev/stdin`) from wherever the peek left it."""

    def __init__(self, raw: BinaryIO):
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_source(path: Path) -> BinaryIO:
    """The file as bytes; gzip input (by its magic number, peeked at without consuming it) is
    decompressed as it is read."""
    raw = open(path, "rb")
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return _Gunzipped(raw)
    return raw


def split_fields(text: str, delimiter: str) -> list[tuple[str, bool]]:
    """COPY's CSV rules: (value, quoted) per field. A quote opens a quoted stretch anywhere in
    a field (`ab"c,d"e` is one field `abc,de`); inside it a doubled quote is a quote."""
    if '"' not in text:
        return [(part, False) for part in text.split(delimiter)]
    fields: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while True:
        parts, quoted = [], False
        while i < n and text[i] != delimiter:
            if text[i] == '"':
                quoted = True
                i += 1
                while True:
                    k = text.find('"', i)
                    if k < 0:  # cannot happen for a record whose quotes balance
                        parts.append(text[i:])
                        i = n
                        break
                    parts.append(text[i:k])
                    if k + 1 < n and text[k + 1] == '"':
                        parts.append('"')
                        i = k + 2
                        continue
                    i = k + 1
                    break
            else:
                k = i
                while k < n and text[k] != delimiter and text[k] != '"':
                    k += 1
                parts.append(text[i:k])
                i = k
        fields.append(("".join(parts), quoted))
        if i >= n:
            return fields
        i += 1  # the delimiter


def read_records(stream: BinaryIO, delimiter: str) -> Iterator[Record]:
    """Every record of the file in order (blank lines are no records), each with the line it
    starts on. A record ends at a line break outside quotes; the parity of the quotes on its
    lines tells (as COPY's own line splitting does)."""
    reader = RecordReader(delimiter)
    for raw in stream:
        yield from reader.feed(raw)
    yield from reader.end()


class RecordReader:
    """read_records' state, fed one line (bytes, with its line break) at a time: the records
    read so far, the lines, a record still open (a quoted field across lines), what is wrong
    with it."""

    def __init__(self, delimiter: str):
        self.delimiter = delimiter
        self.number = 0  # records so far
        self.lineno = 0  # lines so far
        self.pending: list[str] | None = None  # the lines of an open record
        self.start = 0
        self.problem: tuple[str, str] | None = None
        self.size = 0

    @property
    def idle(self) -> bool:
        """No record is open: the next line starts one."""
        return self.pending is None

    def feed(self, raw: bytes) -> Iterator[Record]:
        self.lineno += 1
        lineno = self.lineno
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", "replace")
            if self.problem is None:
                self.problem = (f"invalid UTF-8 at line {lineno}, byte {exc.start + 1} of the line", "encoding")
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        if "\x00" in text and self.problem is None:
            self.problem = (f"NUL byte (0x00) at line {lineno}: PostgreSQL text cannot hold it", "encoding")
            text = text.replace("\x00", "\ufffd")
        if self.pending is None:
            if text.count('"') % 2 == 0:
                body = text[:-1] if text.endswith("\n") else text
                if body.endswith("\r"):
                    body = body[:-1]
                if not body:
                    self.problem = None
                    return
                self.number += 1
                yield _record(self.number, lineno, body, self.delimiter, self.problem)
                self.problem = None
                return
            self.pending, self.start, self.size = [text], lineno, len(text)
            return
        pending, start = self.pending, self.start
        pending.append(text)
        self.size += len(text)
        if text.count('"') % 2 == 1:
            body = "".join(pending)
            body = body[:-1] if body.endswith("\n") else body
            if body.endswith("\r"):
                body = body[:-1]
            self.pending = None
            self.number += 1
            yield _record(self.number, start, body, self.delimiter, self.problem)
            self.problem = None
        elif self.size > MAX_RECORD_CHARS:
            self.number += 1
            yield Record(self.number, start, pending[0][:200], reason=f"record starting at line {start} is longer "
                         f"than {MAX_RECORD_CHARS >> 20} MB (a quote never closed?)", kind="malformed")
            self.pending, self.problem = None, None

    def end(self) -> Iterator[Record]:
        if self.pending is not None:
            self.number += 1
            text = "".join(self.pending)
            yield Record(self.number, self.start, text[:1000], reason=f"unterminated quoted field (the quote opened "
                         f"on line {self.start} is never closed)", kind="malformed")
            self.pending = None

    def blocks(self, stream: BinaryIO) -> Iterator["Record | Plain"]:
        """The rest of the stream: a block of about BLOCK bytes whose lines are all records of
        one line (an even number of quotes on each, no carriage return, no NUL, no blank line,
        valid UTF-8, no record open before it) as one Plain; any other block line by line, as
        its Records."""
        while True:
            block = stream.read(BLOCK)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += stream.readline()
            if (self.pending is None and self.lineno > 0 and b"\r" not in block and b"\x00" not in block
                    and b"\n\n" not in block and not block.startswith(b"\n")):
                try:
                    text = block.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
                lines = text.split("\n") if text is not None else None
                if lines is not None and '"' in text and any(t.count('"') % 2 for t in lines if '"' in t):
                    lines = None  # a quoted field goes on on the next line: line by line
                if lines is not None:
                    if not lines[-1]:
                        lines.pop()
                    yield Plain(self.number + 1, self.lineno + 1, lines)
                    self.number += len(lines)
                    self.lineno += len(lines)
                    continue
            parts = block.split(b"\n")
            last = parts.pop()
            for part in parts:
                yield from self.feed(part + b"\n")
            if last:
                yield from self.feed(last)
        yield from self.end()


@dataclass
class Plain:
    """Consecutive records of one line each, their quotes balanced on the line: the first's
    number and line, their texts."""

    number: int
    line: int
    texts: list[str]


def _record(number: int, line: int, body: str, delimiter: str, problem) -> Record:
    if problem is not None:
        return Record(number, line, body, split_fields(body, delimiter), problem[0], problem[1])
    return Record(number, line, body)


@dataclass
class Layout:
    """Where each mapped column's field is in the file's records, and how many fields a record has."""

    columns: list[str]  # staging columns, in mapping order
    indexes: list[int]  # 0-based field of each
    width: int  # fields per record
    names: list[str]  # each field's name for a rejected record's JSON

    @property
    def verbatim(self) -> bool:
        """Whether a record's fields are the staging columns in order (the line goes as it is)."""
        return self.indexes == list(range(self.width))


def plan_layout(csv: dict, header: list[str] | None, first_width: int | None, path: Path,
                header_line: int = 1) -> Layout:
    """Resolve field_mapping against the header (or the first record's width); refuse what
    cannot work before anything is staged."""
    mapping = csv["mapping"]
    delimiter = csv["delimiter"]
    if header is not None:
        width = len(header)
        positions: dict[str, list[int]] = {}
        for i, name in enumerate(header):
            positions.setdefault(name.strip(), []).append(i)
        indexes = []
        for column, name, position in mapping:
            if name is None:
                if position > width:
                    raise RunError(f"{path}: field_mapping reads csv_column_{position} into {column}, but the header "
                                   f"(line {header_line}) has {width} field(s)")
                indexes.append(position - 1)
                continue
            found = positions.get(name)
            if not found:
                guess = next((d for d in (";", ",", "\t", "|") if d != delimiter and d in header[0]), None) \
                    if width == 1 else None
                hint = (f"; the header is one field: is the delimiter {guess!r}, not {delimiter!r}?" if guess
                        else f" (it has: {', '.join(header[:20])})")
                raise RunError(f"{path}: field_mapping reads {column} from header column '{name}', which the header "
                               f"(line {header_line}) does not have{hint}")
            if len(found) > 1:
                raise RunError(f"{path}: the header names '{name}' {len(found)} times (fields "
                               f"{', '.join(str(i + 1) for i in found)}): field_mapping cannot tell which to read "
                               f"into {column}")
            indexes.append(found[0])
        seen = Counter(h.strip() for h in header)
        names = [h.strip() if seen[h.strip()] == 1 and h.strip() else f"csv_column_{i + 1}"
                 for i, h in enumerate(header)]
    else:
        width = first_width or max((p for _, _, p in mapping), default=0)
        for column, _, position in mapping:
            if position > width:
                raise RunError(f"{path}: field_mapping reads csv_column_{position} into {column}, but the first "
                               f"record has {width} field(s)")
        indexes = [p - 1 for _, _, p in mapping]
        names = [f"csv_column_{i + 1}" for i in range(width)]
    return Layout([c for c, _, _ in mapping], indexes, width, names)


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@dataclass
class Staged:
    staging_id: str
    records: int = 0
    committed: int = 0  # of them, in committed chunks (copy_streamed)
    rejected: Counter = field(default_factory=Counter)  # kind -> records staged as rejected


class Abandoned(Exception):
    """The load was abandoned (a second Ctrl-C while the rest of the file was staged)."""


def stage_file(conn: psycopg.Connection, op, path: Path, *, staging_id: str | None = None) -> Staged:
    """COPY the file's records into the operation's staging table under a new staging id
    (committed: the routine, and a resume, read them from there). `op` is the Operation, or
    its CsvSource.to_json() (what generated tests know)."""
    with FileLoad(op, path, staging_id) as load:
        with conn.transaction():
            # The staging table's _staging_id defaults to this setting (psql's \copy uses it too).
            conn.execute("SELECT pg_catalog.set_config('specql.staging_id', %s, true)", (load.staged.staging_id,))
            load.copy(conn)
    return load.staged


class FileLoad:
    """One CSV file on its way into the staging table: opened, its header read and the
    field_mapping resolved on entry (what cannot work is refused before anything is staged),
    then its records COPYed, all at once (copy) or in committed chunks behind a marker row
    that tells the routine the load is still growing (copy_streamed)."""

    def __init__(self, op, path: Path, staging_id: str | None = None):
        self.csv = op if isinstance(op, dict) else op.csv.to_json()
        self.path = path
        self.staged = Staged(staging_id or str(uuid.uuid4()))
        self.pieces: Iterator[tuple[str, int]] | None = None  # what copy sends, COPY_CHUNK at a time
        self.abandon = threading.Event()  # set: copy stops before its next piece (_stage_and_run)

    def __enter__(self) -> "FileLoad":
        csv, path = self.csv, self.path
        d = csv["delimiter"]
        try:
            self.stream = open_source(path)
        except OSError as exc:
            raise RunError(f"--csv: cannot read {path}: {exc.strerror}") from None
        try:
            self._plan(csv, path, d)
        except BaseException:
            self.stream.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.pieces is not None:
            self.pieces.close()  # a reading thread (copy_streamed) stops before the file closes
        self.stream.close()

    def _plan(self, csv: dict, path: Path, d: str) -> None:
        items = RecordReader(d).blocks(self.stream)
        header = None
        header_line = 1
        if csv["has_header"]:
            first, items = _take(items)
            if first is None:
                raise RunError(f"{path}: the file is empty; csv_has_header says its first line is a header")
            if first.reason and first.kind != "encoding":
                raise RunError(f"{path}: the header (line {first.line}) cannot be read: {first.reason}")
            header = [v for v, _ in (first.fields or split_fields(first.text, d))]
            header_line = first.line
            number_offset = 1
        else:
            number_offset = 0
        first_record, items = _take(items)
        first_width = None
        if first_record is not None and header is None:
            first_width = len(first_record.fields or split_fields(first_record.text, d))
        layout = plan_layout(csv, header, first_width, path, header_line)
        self.target = sql.Identifier(csv["schema"], csv["staging"])
        self.copy_sql = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, DELIMITER {})").format(
            self.target, sql.SQL(", ").join(sql.Identifier(c) for c in STAGING_COLUMNS + tuple(layout.columns)),
            sql.Literal(d))
        self.lines = self._lines(layout, _chain(first_record, items), number_offset, d)

    def _lines(self, layout: Layout, items: Iterator["Record | Plain"], number_offset: int,
               d: str) -> Iterator[tuple[str, int]]:
        """The staging COPY's lines, several at a time (each ending with a line break) and
        how many: per record _record, _line, the reject columns, the mapped fields."""
        staged = self.staged
        width, verbatim = layout.width, layout.verbatim
        pick = operator.itemgetter(*layout.indexes) if layout.indexes else (lambda parts: ())
        single = len(layout.indexes) == 1
        empty_fields = d * max(len(layout.columns) - 1, 0)
        prefix_sep = d * 4
        no_line = d * 5
        separators = width - 1
        for item in items:
            if isinstance(item, Plain):
                first = item.number - number_offset
                shift = item.line - item.number  # a plain block's records are one line each
                texts = item.texts
                if verbatim and all((t.count(d) if '"' not in t else _separators(t, d)) == separators
                                    for t in texts):
                    # The common case: the lines go as they are, behind their numbers (COPY
                    # reads their quoted fields by the rules split_fields follows). A record on
                    # the line the routine infers (its number plus the header's, no blank or
                    # multi-line record before it) is staged without _line: one field less.
                    if shift == 0:
                        yield "".join([f"{n}{no_line}{t}\n" for n, t in enumerate(texts, first)]), len(texts)
                    else:
                        yield "".join([f"{n}{d}{n + number_offset + shift}{prefix_sep}{t}\n"
                                       for n, t in enumerate(texts, first)]), len(texts)
                    continue
                records: Iterator[Record] = (Record(item.number + i, item.line + i, t) for i, t in enumerate(texts))
            else:
                records = iter((item,))
            for rec in records:
                number = rec.number - number_offset
                if rec.reason is None and '"' not in rec.text:
                    parts = rec.text.split(d)
                    if len(parts) == width:
                        if verbatim:
                            yield f"{number}{d}{rec.line}{prefix_sep}{rec.text}\n", 1
                        elif single:
                            yield f"{number}{d}{rec.line}{prefix_sep}{pick(parts)}\n", 1
                        else:
                            yield f"{number}{d}{rec.line}{prefix_sep}{d.join(pick(parts))}\n", 1
                        continue
                    rec.fields = [(p, False) for p in parts]
                fields = rec.fields if rec.fields is not None or rec.reason else split_fields(rec.text, d)
                if rec.reason is None and len(fields) != width:
                    rec.reason, rec.kind = f"wrong field count: {len(fields)} field(s), expected {width}", "field count"
                if rec.reason is None:
                    values = [fields[i] for i in layout.indexes]
                    body = d.join(_quote(v) if q or v else "" for v, q in values)
                    yield f"{number}{d}{rec.line}{prefix_sep}{body}\n", 1
                    continue
                staged.rejected[rec.kind] += 1
                raw = _raw_json(rec, fields, layout)
                yield (f"{number}{d}{rec.line}{d}{_quote(rec.reason)}{d}{_quote(rec.kind)}{d}{_quote(raw)}{d}"
                       f"{empty_fields}\n"), 1

    def _pieces(self) -> Iterator[tuple[str, int]]:
        """The staging lines joined into pieces of about COPY_CHUNK characters, each with its
        record count."""
        buf: list[str] = []
        size = count = 0
        for lines, n in self.lines:
            buf.append(lines)
            size += len(lines)
            count += n
            if size >= COPY_CHUNK:
                yield "".join(buf), count
                buf, size, count = [], 0, 0
        if buf:
            yield "".join(buf), count

    def copy(self, conn: psycopg.Connection, limit: int | None = None) -> bool:
        """One COPY of the next records (all of them, or about `limit` bytes); whether any were left."""
        if self.pieces is None:
            self.pieces = self._pieces()
        cur = conn.cursor()
        # A writer thread sends each chunk while the next one is read and split.
        writer = QueuedLibpqWriter(cur)
        # psycopg queues up to 1024 chunks: a few are enough to keep the sender busy, and
        # the client's memory stays flat (a handful of 1 MB chunks) whatever the file's size.
        writer._queue = queue.Queue(maxsize=4)
        sent = 0
        with cur.copy(self.copy_sql, writer=writer) as copy:
            for text, count in self.pieces:
                if self.abandon.is_set():
                    raise Abandoned  # this COPY ends with CopyFail: its rows are rolled back
                copy.write(text)
                self.staged.records += count
                sent += len(text)
                if limit is not None and sent >= limit:
                    return True
        return False

    def read_fraction(self) -> float | None:
        """About how much of the file has been read (the compressed bytes of a gzip file), for
        a progress line; None when it cannot tell."""
        try:
            raw = self.stream.fileobj if isinstance(self.stream, gzip.GzipFile) else self.stream
            size = os.fstat(raw.fileno()).st_size
            return min(raw.tell() / size, 1.0) if size else None
        except (OSError, ValueError, AttributeError):
            return None

    def open_marker(self, conn: psycopg.Connection) -> None:
        """Mark the load as being staged by this connection's backend (committed): a routine
        started on it follows it as it grows (templates/sql/csv/streamed.sql.j2)."""
        conn.execute("SELECT pg_catalog.set_config('specql.staging_id', %s, false)", (self.staged.staging_id,))
        conn.execute(sql.SQL(
            "INSERT INTO {} (_record, _line, _raw) SELECT 0, 0, jsonb_build_object('pid', a.pid, "
            "'backend_start', a.backend_start) FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS a"
        ).format(self.target))

    def copy_streamed(self, conn: psycopg.Connection) -> None:
        """COPY the records in committed chunks (the first of COPY_CHUNK bytes, so the routine
        starts soon; then of STREAM_CHUNK), then remove the marker: the load is whole."""
        # The next pieces are read and split while a chunk's COPY ends and commits.
        self.pieces = _read_ahead(self.pieces or self._pieces(), 2)
        limit = COPY_CHUNK
        while self.copy(conn, limit):
            self.staged.committed = self.staged.records
            limit = min(limit * 2, STREAM_CHUNK)
        self.staged.committed = self.staged.records
        conn.execute(sql.SQL("DELETE FROM {} WHERE _staging_id = %s AND _record = 0").format(self.target),
                     (self.staged.staging_id,))


def _read_ahead(items: Iterator, depth: int) -> Iterator:
    """items, produced by a thread of their own at most `depth` ahead of the consumer (so the
    file is read and split while the consumer waits on the server). An error of the producer is
    raised in the consumer; closing the consumer stops the producer."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        """Queue an entry unless the consumer is gone (then False)."""
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer
            put(("error", exc))

    threading.Thread(target=produce, name="specql-csv-reader", daemon=True).start()
    try:
        while True:
            kind, value = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _chain(first, rest: Iterator) -> Iterator:
    if first is not None:
        yield first
    yield from rest


def _separators(text: str, d: str) -> int:
    """The delimiters of a one-line record outside its quoted stretches (its fields, less one):
    those between the 2nd and 3rd quote, the 4th and 5th... A doubled quote inside a quoted
    stretch closes and reopens it, as split_fields reads it."""
    return sum(part.count(d) for part in text.split('"')[::2])


def _take(items: Iterator["Record | Plain"]) -> tuple[Record | None, Iterator["Record | Plain"]]:
    """The next record (split off a Plain block), and the items after it."""
    item = next(items, None)
    if isinstance(item, Plain):
        rest = Plain(item.number + 1, item.line + 1, item.texts[1:])
        return Record(item.number, item.line, item.texts[0]), _chain(rest if rest.texts else None, items)
    return item, items


def _raw_json(rec: Record, fields, layout: Layout) -> str:
    if fields is None:
        return json.dumps({"text": rec.text[:1000]}, ensure_ascii=False)
    out = {}
    for i, (value, quoted) in enumerate(fields):
        name = layout.names[i] if i < len(layout.names) else f"csv_column_{i + 1}"
        out[name] = value if (value or quoted) else None
    return json.dumps(out, ensure_ascii=False)


# --------------------------------------------------------------------------- after the run


def rejected_summary(conn: psycopg.Connection, operation_id) -> list[tuple[str, int]]:
    """Rejected records of a run by kind (error_detail), most first."""
    rows = conn.execute(
        "SELECT coalesce(error_detail, sqlstate), count(*) FROM specql.batch_operation_errors "
        "WHERE operation_id = %s GROUP BY 1 ORDER BY 2 DESC, 1", (operation_id,)).fetchall()
    return [(kind, n) for kind, n in rows]


def write_rejects(conn: psycopg.Connection, operation_id, op, path: Path, out: Path) -> int:
    """The rejected records, as the file had them, to `out` as CSV with a last column `reason`
    (a second pass over the file; the header is written first when the file has one)."""
    import csv as csvmod

    reasons: dict[int, str] = {}
    for line, reason in conn.execute(
            "SELECT (failed_records ->> 'line')::bigint, error_message FROM specql.batch_operation_errors "
            "WHERE operation_id = %s AND failed_records ? 'line' ORDER BY 1", (operation_id,)):
        reasons.setdefault(line, reason)
    d = op.csv.delimiter
    written = 0
    with open_source(path) as stream, open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csvmod.writer(fh, delimiter=d, lineterminator="\n")
        records = read_records(stream, d)
        if op.csv.has_header:
            first = next(records, None)
            if first is not None:
                writer.writerow([v for v, _ in (first.fields or split_fields(first.text, d))] + ["reason"])
        for rec in records:
            if rec.line not in reasons:
                continue
            fields = rec.fields if rec.fields is not None else (
                [(rec.text, True)] if rec.kind == "malformed" else split_fields(rec.text, d))
            writer.writerow([v for v, _ in fields] + [reasons[rec.line]])
            written += 1
    return written


def drop_staged(conn: psycopg.Connection, op, staging_id: str, table: str | None = None) -> None:
    """Remove a finished load's staged rows: TRUNCATE when it is the only load in the table
    (and nobody holds it), else DELETE. `table`: another staging table of the operation's
    schema (a jsonb data_source's, specql/jsonimport.py)."""
    target = sql.Identifier(op.schema, table or op.csv.staging_name)
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '1s'")
        ends = sql.SQL("SELECT (SELECT _staging_id FROM {0} ORDER BY _staging_id LIMIT 1), "
                       "(SELECT _staging_id FROM {0} ORDER BY _staging_id DESC LIMIT 1)").format(target)
        only = conn.execute(ends).fetchone() == (uuid.UUID(staging_id),) * 2
        if only:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target))
                    if conn.execute(ends).fetchone() == (uuid.UUID(staging_id),) * 2:
                        conn.execute(sql.SQL("TRUNCATE {}").format(target))
                        return
            except psycopg.errors.LockNotAvailable:
                pass
        conn.execute(sql.SQL("DELETE FROM {} WHERE _staging_id = %s").format(target), (staging_id,))


# --------------------------------------------------------------------------- `specql run --csv`


def _incomplete(conn: psycopg.Connection, op, staging_id: str) -> int | None:
    """The staged rows of a load that still has its marker row (its staging never reached the
    end of the file); None for a whole load."""
    marked, rows = conn.execute(sql.SQL(
        "SELECT count(*) FILTER (WHERE _record = 0), count(*) FILTER (WHERE _record > 0) FROM {} "
        "WHERE _staging_id = %s").format(sql.Identifier(op.schema, op.csv.staging_name)), (staging_id,)).fetchone()
    return rows if marked else None


def _echo_staged(echo: Callable[[str], None], staged: Staged, path: Path) -> None:
    if staged.rejected:
        echo(f"staged {staged.records:,} record(s) from {path}; "
             + ", ".join(f"{n:,} {k}" for k, n in sorted(staged.rejected.items())) + " rejected while reading")


# How often the wait for the rest of a load says how far the staging got (seconds).
STAGING_PROGRESS_EVERY = 10.0


def _stage_and_run(url: str, op, path: Path, call: Callable[[str], dict], echo: Callable[[str], None]):
    """Stage the file on a connection of its own, in committed chunks behind the load's
    marker row, while `call(staging_id)` runs the routine, which follows the load as it grows
    (one pass over the file: staging and importing overlap). When the routine ends first (a
    Ctrl-C, a failure), staging goes on to the end of the file, so the stopped run can be
    resumed on the whole load; a second Ctrl-C abandons the load instead (_await_staging).
    A staging that fails closes its connection: the routine then stops (failed) instead of
    waiting for rows that will never come. Returns the staged load, the result and whether
    the load was abandoned (its staging stopped before the end of the file)."""
    failure: list[BaseException] = []
    with staging_connection(url, op) as stager, FileLoad(op, path) as load:
        load.open_marker(stager)

        def stage() -> None:
            try:
                load.copy_streamed(stager)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
                failure.append(exc)
                stager.close()

        thread = threading.Thread(target=stage, name="specql-csv-staging", daemon=True)
        thread.start()
        try:
            result = call(load.staged.staging_id)
        except BaseException:
            if _await_staging(op, path, load, stager, thread, None, echo):
                with staging_connection(url, op) as conn:
                    rows = _incomplete(conn, op, load.staged.staging_id)
                    if rows is not None:
                        drop_staged(conn, op, load.staged.staging_id)
                        echo(f"abandoned the load after {rows:,} staged record(s) and removed them")
            raise
        abandoned = _await_staging(op, path, load, stager, thread, result, echo)
    _echo_staged(echo, load.staged, path)
    if failure and not abandoned:
        exc = failure[0]
        raise RunError(f"--csv: staging {path} failed after {load.staged.records:,} record(s): "
                       f"{str(exc).strip() or type(exc).__name__}; the run {result.get('operation_id')} "
                       f"ended {result.get('status')}") from None
    return load.staged, result, abandoned


def _await_staging(op, path: Path, load: FileLoad, stager: psycopg.Connection, thread: threading.Thread,
                   result: dict | None, echo: Callable[[str], None]) -> bool:
    """The routine has ended (`result`; None: its call raised) while the file is still being
    staged. A commit_per_batch run: say so, and wait for the staging to reach the end of the
    file (a progress line every STAGING_PROGRESS_EVERY seconds), so the run can be resumed on
    the whole load; a Ctrl-C meanwhile abandons the load. A run that cannot be resumed (not
    commit_per_batch, or no run) does not wait: its load is abandoned at once. Whether the
    load was abandoned."""
    if not thread.is_alive():
        return False
    if not op.is_procedure:
        _abandon(load, stager, thread, echo)
        return True
    if result is None:
        ended, resume = "stopped", f"`specql run {op.name} --resume ID`, its id in `specql status`"
    else:
        run_id = result.get("operation_id")
        ended, resume = f"{run_id} ended {result.get('status')}", f"`specql run {op.name} --resume {run_id}`"
    echo(f"the run {ended}; staging the rest of {path} so that it can be resumed ({resume}); press Ctrl-C "
         f"again to abandon the load (the run then cannot be resumed)")
    interrupted = threading.Event()
    handler_set = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if handler_set else None
    try:
        next_line = time.monotonic() + STAGING_PROGRESS_EVERY
        while thread.is_alive():
            if interrupted.wait(min(max(next_line - time.monotonic(), 0.0), 0.25)):
                _abandon(load, stager, thread, echo)
                return True
            if time.monotonic() >= next_line:
                fraction = load.read_fraction()
                echo(f"staged {load.staged.committed:,} record(s) of {path}"
                     + (f" ({fraction:.0%} of the file read)" if fraction is not None else ""))
                next_line += STAGING_PROGRESS_EVERY
        return False
    finally:
        if handler_set:
            signal.signal(signal.SIGINT, previous)


def _abandon(load: FileLoad, stager: psycopg.Connection, thread: threading.Thread,
             echo: Callable[[str], None]) -> None:
    """Stop the staging: its COPY ends before its next piece (or at once, cancelled, when it
    waits on the server), its chunk is rolled back and its connection closed, leaving the
    marker row of a load that will never be whole (templates/sql/csv/streamed.sql.j2)."""
    load.abandon.set()
    try:
        if hasattr(stager, "cancel_safe"):  # psycopg >= 3.2
            stager.cancel_safe(timeout=5)
        else:
            stager.cancel()
    except Exception:  # noqa: BLE001 - the connection may be closing already; the flag stops the COPY
        pass
    thread.join(30)
    if thread.is_alive():
        echo("the staging did not stop within 30 s; giving up on it")


def run_csv(url: str, op, csv_file: str | None, raw_params: list[str], *, confirm: bool, batch_size: int | None,
            resume: str | None, rejects: str | None, execute: Callable, bind_params: Callable,
            echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr), overlap: bool = True,
            **execute_kw) -> dict:
    """Stage the file (or, on --resume, find the run's staged load), call the routine, print
    the summary, write --rejects, drop the staged rows of a finished run. With `overlap`
    (the routine on one connection, not workers) the routine starts on the file's first
    committed rows and follows the staging, which goes on on a second connection."""
    if op.csv is None:
        raise RunError(f"--csv: {op.name} does not import CSV (its data_source is not csv_file)")
    others = [p for p in raw_params if not p.startswith("staging_id=")]
    if len(others) != len(raw_params):
        raise RunError("--param staging_id: specql run --csv stages the file and passes staging_id itself")
    path = Path(csv_file) if csv_file else None

    def call(staging_id: str) -> dict:
        """The routine (or the workers) on the load staged under staging_id."""
        return execute(url, op, bind_params(op, others + [f"staging_id={staging_id}"]), confirm=confirm,
                       batch_size=batch_size, resume=resume, **execute_kw)

    with staging_connection(url, op) as conn:
        if resume:
            staging_id = staged_load(conn, op, resume)
            if staging_id is None:
                raise RunError(f"--resume {resume}: no run of {op.name} with staged rows under that id")
            staged = Staged(staging_id)
            result = call(staging_id)
        elif path is None:
            raise RunError(f"{op.name} imports a CSV file: pass --csv FILE")
        elif not overlap or op.max_records is not None or op.requires_confirmation:
            # Staged whole first: max_records and confirmation need the count, workers the chunks.
            staged = stage_file(conn, op, path)
            _echo_staged(echo, staged, path)
            result = call(staged.staging_id)
        else:
            staged, result, abandoned = _stage_and_run(url, op, path, call, echo)
            rows = _incomplete(conn, op, staged.staging_id) if abandoned else None
            if rows is not None:
                # The staging session ended before the last row: the routine refuses a resume
                # of this load (csv/streamed.sql.j2), so its staged rows go.
                drop_staged(conn, op, staged.staging_id)
                result["load_abandoned"] = True
                echo(f"abandoned the load after {rows:,} staged record(s) and removed them; the run "
                     f"{result.get('operation_id')} cannot be resumed: import {path} again")
        with after_the_run(result, staged.staging_id, echo):
            summary = rejected_summary(conn, result["operation_id"])
            rejected = sum(n for _, n in summary)
            echo(f"imported {result.get('processed_records') or 0:,} record(s), rejected {rejected:,}"
                 + (": " + ", ".join(f"{n:,} {k}" for k, n in summary) if summary else ""))
            if rejects and path is not None:
                write_rejects_file(rejects, result["operation_id"],
                                   lambda: write_rejects(conn, result["operation_id"], op, path, Path(rejects)), echo)
            if result.get("status") in ("completed", "completed_with_errors"):
                drop_staged(conn, op, staged.staging_id)
            elif not result.get("load_abandoned"):
                echo(f"the staged rows stay under staging_id {staged.staging_id} for a resume")
            result["staging_id"] = staged.staging_id
            return result

