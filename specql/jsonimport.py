"""`specql run OP --json FILE` (SPEC §11): stream a large jsonb data_source from a file into the
operation's staging table with COPY, call the routine on the staged load, report, clean up.

The routine's jsonb argument holds the whole array in the backend (about 2.6 GB for a million
records, bench/README.md); a staged load is read batch_size records at a time
(templates/sql/drivers/source.sql.j2), so the backend's memory stays flat.

Two file shapes, told by the first character that is not whitespace (after a UTF-8 BOM;
gzip input is decompressed as it is read):

- `{` JSON lines: one object a line (blank lines skipped). Lines go to COPY as they are, with
  no parsing on the client: PostgreSQL's jsonb input checks each one, and the staging table's
  CHECK that it is an object. When it refuses one, the file is read again up to that record
  to name it (`file:line:col`) and nothing is staged.
- `[` a JSON array of objects (on one line or many). The client finds each element's end
  with the json module's C scanner (JSONDecoder.raw_decode over a window of the file, never
  the whole file) and sends the element's own text; a syntax error or an element that is not
  an object is named (`file:line:col`) and nothing is staged.

Either way one record is one staged row: `_record` dense from 1 (what batches and a resume
count), `_line` the file line it starts on (in the error rows of a failed batch).
"""

from __future__ import annotations

import codecs
import io
import json
import queue
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from .csvimport import COPY_CHUNK, drop_staged, open_source
from .run import Bound, RunError
from .staging import after_the_run, staged_load, staging_connection, write_rejects_file

READ_CHUNK = 1 << 20  # characters of a JSON array decoded at a time
MAX_RECORD_CHARS = 256 << 20  # an array element longer than this is refused (a bracket never closed?)
BOM = "\ufeff"
_WS = " \t\r\n"
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_COPY_LINE = re.compile(r"\bCOPY [^\n]*?, line (\d+)")


@dataclass
class Staged:
    staging_id: str
    records: int = 0
    shape: str = ""  # "lines" or "array"


def _located(path: Path, line: int, col: int, message: str) -> RunError:
    return RunError(f"{path}:{line}:{col}: {message}; nothing was staged")


class _Prefixed(io.RawIOBase):
    """The bytes already read from a stream, then the rest of it (closed with it)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._rest.close()
        finally:
            super().close()


def open_shaped(path: Path) -> tuple[str, BinaryIO]:
    """The file, opened once, and its shape: 'array' ([), 'lines' ({, or an empty file), else a
    RunError naming what the file starts with. The shape is told from the first bytes, which
    the stream returned still yields: opening the file again by name would read a pipe
    (`--json /dev/stdin`) from wherever the first read left it."""
    stream = open_source(path)
    try:
        head = stream.read(1 << 16)
        while head and not head.lstrip(b" \t\r\n").lstrip(BOM.encode()).lstrip(b" \t\r\n"):
            more = stream.read(1 << 16)
            if not more:
                break
            head += more
        shape = _shape(path, head)
    except BaseException:
        stream.close()
        raise
    return shape, io.BufferedReader(_Prefixed(head, stream), 1 << 16)


def _shape(path: Path, head: bytes) -> str:
    first = head.lstrip(b" \t\r\n").lstrip(BOM.encode()).lstrip(b" \t\r\n")[:1]
    if not first:
        return "lines"
    if first == b"[":
        return "array"
    if first == b"{":
        return "lines"
    line = head[:head.find(first)].count(b"\n") + 1
    raise RunError(f"{path}:{line}: expected a JSON array of objects ('[') or JSON lines (one object a line, "
                   f"'{{'), not {first.decode('utf-8', 'replace')!r}")


def _copy_text(body: str) -> str:
    """A record as one field of COPY's text format (its backslashes, tabs, line breaks escaped)."""
    if "\\" in body:
        body = body.replace("\\", "\\\\")
    if "\n" in body:
        body = body.replace("\n", "\\n")
    if "\r" in body:
        body = body.replace("\r", "\\r")
    if "\t" in body:
        body = body.replace("\t", "\\t")
    return body


def lines_rows(stream: BinaryIO) -> Iterator[bytes]:
    """COPY lines (_record, _line, record) of a JSON lines file, unparsed."""
    n = 0
    for lineno, raw in enumerate(stream, 1):
        body = raw.rstrip(b"\r\n")
        if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
            body = body[3:]
        if not body.strip(b" \t\r"):
            continue
        if b"\\" in body:
            body = body.replace(b"\\", b"\\\\")
        if b"\t" in body:
            body = body.replace(b"\t", b"\\t")
        if b"\r" in body:
            body = body.replace(b"\r", b"\\r")
        n += 1
        yield b"%d\t%d\t%s\n" % (n, lineno, body)


def array_rows(stream: BinaryIO, path: Path) -> Iterator[bytes]:
    """COPY lines (_record, _line, record) of a JSON array file: each element's own text, found
    by raw_decode in a window of the decoded file that moves forward (never the whole file)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    decode = json.JSONDecoder().raw_decode
    buf, pos, base_line, eof = "", 0, 1, False  # base_line: the line buf[0] is on
    line_pos, line_at = 0, 1  # the line buf[line_pos] is on (counted forward, element by element)

    def more() -> bool:
        nonlocal buf, pos, base_line, eof, line_pos, line_at
        if eof:
            return False
        raw = stream.read(READ_CHUNK)
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            line, col = where(len(buf))
            raise _located(path, line, col, f"invalid UTF-8 ({exc.reason}) near here") from None
        base_line += buf.count("\n", 0, pos)
        line_at += buf.count("\n", line_pos, pos)
        buf, pos, line_pos = buf[pos:] + text, 0, 0
        if not raw:
            eof = True
        return True

    def where(at: int) -> tuple[int, int]:
        line = base_line + buf.count("\n", 0, at)
        return line, at - (buf.rfind("\n", 0, at) + 1) + 1

    def skip_ws() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    more()
    if buf.startswith(BOM):
        pos = 1
    skip_ws()
    pos += 1  # the "[" (open_shaped saw it)
    n, line = 0, base_line
    if skip_ws() == "]":
        pos += 1
    else:
        while True:
            skip_ws()
            start = pos
            while True:
                try:
                    value, end = decode(buf, start)
                except json.JSONDecodeError as exc:
                    truncated = exc.pos >= len(buf) - 8 or exc.msg.startswith("Unterminated string")
                    if truncated and not eof and len(buf) - start < MAX_RECORD_CHARS and more():
                        start = pos
                        continue  # the element may go on in the next chunk
                    line, col = where(exc.pos)
                    raise _located(path, line, col, exc.msg) from None
                if end == len(buf) and not eof and more():  # a number may go on in the next chunk
                    start = pos
                    continue
                break
            line_at += buf.count("\n", line_pos, start)
            line_pos = start
            line = line_at
            if not isinstance(value, dict):
                raise _located(path, *where(start), f"element {n + 1} of the array is a JSON "
                                                    f"{_JSON_TYPES.get(type(value), 'value')}, "
                                                    f"not an object")
            n += 1
            yield b"%d\t%d\t%s\n" % (n, line, _copy_text(buf[start:end]).encode("utf-8"))
            pos = end
            c = skip_ws()
            if c == ",":
                pos += 1
                continue
            if c == "]":
                pos += 1
                break
            line, col = where(pos)
            raise _located(path, line, col, "expected ',' or ']' after an array element"
                           if c else "the array is never closed (']' missing)")
    if skip_ws():
        line, col = where(pos)
        raise _located(path, line, col, "extra data after the array")


def stage_file(conn: psycopg.Connection, op, path: Path, *, staging_id: str | None = None) -> Staged:
    """COPY the file's records into the operation's staging table under a new staging id, in
    one committed transaction (all of the file, or nothing)."""
    staged = Staged(staging_id or str(uuid.uuid4()))
    try:
        staged.shape, stream = open_shaped(path)
    except OSError as exc:
        raise RunError(f"--json: cannot read {path}: {exc.strerror}") from None
    target = sql.Identifier(op.schema, op.json_staging_name)
    copy_sql = sql.SQL("COPY {} (_record, _line, record) FROM STDIN").format(target)
    count = 0
    with stream:
        rows = lines_rows(stream) if staged.shape == "lines" else array_rows(stream, path)
        try:
            with conn.transaction():
                # The staging table's _staging_id defaults to this setting (psql's \copy uses it too).
                conn.execute("SELECT pg_catalog.set_config('specql.staging_id', %s, true)", (staged.staging_id,))
                cur = conn.cursor()
                writer = QueuedLibpqWriter(cur)
                writer._queue = queue.Queue(maxsize=4)  # a few 1 MB chunks in flight: flat client memory
                with cur.copy(copy_sql, writer=writer) as copy:
                    buf: list[bytes] = []
                    size = 0
                    for line in rows:
                        buf.append(line)
                        size += len(line)
                        count += 1
                        if size >= COPY_CHUNK:
                            copy.write(b"".join(buf))
                            buf, size = [], 0
                    if buf:
                        copy.write(b"".join(buf))
        except psycopg.Error as exc:
            raise _refused_record(exc, path, staged.shape) from None
    staged.records = count
    return staged


def _refused_record(exc: psycopg.Error, path: Path, shape: str) -> RunError:
    """A record PostgreSQL refused while staging (a JSON line that is not JSON or not an
    object; a string jsonb cannot hold, such as \u0000), named by its place in the file."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).splitlines()[0]
    if diag.sqlstate == "23514":
        message = "not a JSON object (a JSON lines file holds one object a line)"
    elif diag.message_detail:
        message += f" ({diag.message_detail.rstrip('.')})"
    m = _COPY_LINE.search(diag.context or "")
    if m is None:
        return RunError(f"{path}: staging failed: {message}")
    record = int(m.group(1))
    if shape == "array":  # the element's line, from the reader's own numbering
        with open_source(path) as stream:
            for row in array_rows(stream, path):
                number, line, _ = row.split(b"\t", 2)
                if int(number) == record:
                    return RunError(f"{path}:{int(line)}: element {record} of the array (it starts on this line): "
                                    f"{message}; nothing was staged")
        return RunError(f"{path}: element {record}: {message}; nothing was staged")
    with open_source(path) as stream:
        n = 0
        for lineno, raw in enumerate(stream, 1):
            body = raw.rstrip(b"\r\n")
            if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
                body = body[3:]
            if not body.strip(b" \t\r"):
                continue
            n += 1
            if n == record:
                col = 1
                try:
                    json.loads(body.decode("utf-8"))
                except UnicodeDecodeError as err:
                    col = err.start + 1
                except json.JSONDecodeError as err:
                    col = err.colno
                return _located(path, lineno, col, message)
    return RunError(f"{path}: record {record}: {message}; nothing was staged")


# --------------------------------------------------------------------------- after the run


def write_rejects(conn: psycopg.Connection, operation_id, out: Path) -> int:
    """The rejected records as JSON lines: {"line", "index", "record", "reason"} (a failed batch
    of continue_on_error: each of its records)."""
    written = 0
    with open(out, "w", encoding="utf-8") as fh:
        for records, message in conn.execute(
                "SELECT failed_records, error_message FROM specql.batch_operation_errors "
                "WHERE operation_id = %s ORDER BY id", (operation_id,)):
            for item in records if isinstance(records, list) else [records]:
                if isinstance(item, dict):
                    fh.write(json.dumps({**item, "reason": message}, ensure_ascii=False) + "\n")
                    written += 1
    return written


def check_json_op(op) -> None:
    if op.stages_json:
        return
    if op.statement.driver == "source" and op.parallel is not None:
        raise RunError(f"--json: {op.name} runs in parallel (parallel: true): its workers read the jsonb argument, "
                       f"not a staged load; pass --param {op.statement.source_param.name}=@FILE")
    raise RunError(f"--json: {op.name} has no jsonb data_source to stage")


# --------------------------------------------------------------------------- `specql run --json`


def run_json(url: str, op, json_file: str | None, raw_params: list[str], *, confirm: bool, batch_size: int | None,
             resume: str | None, rejects: str | None, execute: Callable, bind_params: Callable,
             echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr), **execute_kw) -> dict:
    """Stage the file (or, on --resume, find the run's staged load), call the routine with
    staging_id, print the summary, write --rejects, drop the staged rows of a finished run
    (and of any run of a function: only a procedure's run can be resumed)."""
    check_json_op(op)
    source = op.statement.source_param.name
    if any(p.startswith(("staging_id=", f"{source}=")) for p in raw_params):
        raise RunError(f"--param staging_id / {source}: specql run --json stages the file and passes staging_id itself")
    with staging_connection(url, op) as conn:
        if resume:
            staging_id = staged_load(conn, op, resume)
            if staging_id is None:
                raise RunError(f"--resume {resume}: no run of {op.name} with staged records under that id")
            staged = Staged(staging_id)
        else:
            if not json_file:
                raise RunError(f"{op.name}: pass --json FILE")
            staged = stage_file(conn, op, Path(json_file))
            echo(f"staged {staged.records:,} record(s) from {json_file} ({'JSON lines' if staged.shape == 'lines' else 'a JSON array'})")
        bound = [b if b.name != source else Bound(source, "jsonb", None)
                 for b in bind_params(op, list(raw_params) + [f"{source}=[]"])]
        bound.append(Bound("staging_id", "uuid", staged.staging_id))
        try:
            result = execute(url, op, bound, confirm=confirm, batch_size=batch_size, resume=resume, **execute_kw)
        except RunError:
            if not op.is_procedure:  # nothing can resume a function's run: its load is of no more use
                drop_staged(conn, op, staged.staging_id, table=op.json_staging_name)
            raise
        with after_the_run(result, staged.staging_id, echo):
            summary = conn.execute("SELECT sqlstate, count(*) FROM specql.batch_operation_errors "
                                   "WHERE operation_id = %s GROUP BY 1 ORDER BY 2 DESC, 1",
                                   (result["operation_id"],)).fetchall()
            rejected = result.get("failed_records") or 0
            echo(f"imported {result.get('processed_records') or 0:,} record(s), rejected {rejected:,}"
                 + (": " + ", ".join(f"{n:,} error row(s) SQLSTATE {k}" for k, n in summary) if summary else ""))
            if rejects:
                write_rejects_file(rejects, result["operation_id"],
                                   lambda: write_rejects(conn, result["operation_id"], Path(rejects)), echo)
            if result.get("status") in ("completed", "completed_with_errors") or not op.is_procedure:
                drop_staged(conn, op, staged.staging_id, table=op.json_staging_name)
            else:
                echo(f"the staged records stay under staging_id {staged.staging_id} for a resume")
            result["staging_id"] = staged.staging_id
            return result


def resumes_staged(url: str, op, operation_id: str) -> bool:
    """Whether the run to resume was started on a staged load (else: on the jsonb argument)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return staged_load(conn, op, operation_id) is not None
    except psycopg.Error:
        return False  # the resume itself reports what is wrong
