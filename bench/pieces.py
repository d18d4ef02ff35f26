#!/usr/bin/env python
"""The run bookkeeping of issue 10, piece by piece: generated routines with one piece taken out.

Issue 10 added to every generated routine, per run, reading two settings and a run row with the
backend's pid and start; per batch, a `_batch_size` variable instead of a constant (LIMIT, slice
bounds, key range ends), an EXISTS probe on specql.batch_operation_cancellations, a check of
`_progress` for progress notices, and a retry LOOP (with a labelled batch loop) around the
savepoint block. The issue allows at most 3% on the bench cases; when a case costs more, these
variants say which piece it is. Each is the generated routine with textual edits, created as
bench.<routine>__<variant> (so it runs against the same runtime), and counted by
`instructions.py --variants ...`:

    /work/venv/bin/python bench/instructions.py --variants all_pieces --rows 100000
    /work/venv/bin/python bench/pieces.py --show no_cancel_probe --case update_cond   # print the SQL

The variants are diagnostics, not valid routines: without the retry LOOP an error exits the run.
An edit that no longer matches the generated SQL (the templates changed) is reported and stops.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B  # noqa: E402
from variants import routine_text  # noqa: E402

Edit = Callable[[str, int], str]  # (routine text, batch size) -> edited text; raises LookupError


def _sub(pattern: str, repl: str, flags: int = re.S) -> Edit:
    def edit(text: str, _bs: int) -> str:
        new, n = re.subn(pattern, repl, text, flags=flags)
        if n == 0:
            raise LookupError(pattern)
        return new
    return edit


def _const_batch(text: str, bs: int) -> str:
    """The loop uses the constant batch size again (the variable stays for the run row)."""
    head, sep, body = text.partition("<<batches>>")
    if not sep:
        raise LookupError("<<batches>>")
    body, n = re.subn(r"\b_batch_size\b", str(bs), body)
    if n == 0:
        raise LookupError("_batch_size in the batch loop")
    return head + sep + body


OLD_RUN_ROW = ("INSERT INTO specql.batch_operation_runs (operation_id, operation, total_records, started_at, "
               "heartbeat_at)\n    VALUES (_result.operation_id, _result.operation, _result.total_records, "
               "_result.started_at, _result.started_at);")

PIECES: dict[str, tuple[str, list[Edit]]] = {
    "no_cancel_probe": ("without the per-batch EXISTS probe on specql.batch_operation_cancellations",
                        [_sub(r"\n *-- A cancel request[^\n]*\n *IF EXISTS \(SELECT 1 FROM "
                              r"specql\.batch_operation_cancellations.*?END IF;", "")]),
    "no_progress_check": ("without the per-batch `IF _progress THEN RAISE NOTICE ... END IF`",
                          [_sub(r"\n *IF _progress THEN\n.*?\n *END IF;", "")]),
    "const_batch": ("the batch loop with the constant batch size instead of the _batch_size variable",
                    [_const_batch]),
    "no_retry_loop": ("the savepoint block without the retry LOOP around it (diagnostic: an error exits the run)",
                      [_sub(r"\n( *)LOOP\n( *)BEGIN\n", "\n\\2BEGIN\n"),
                       _sub(r"(_status := 'completed';)\n *EXIT;", r"\1"),
                       _sub(r"\n( *)END;\n *END LOOP;\n", "\n\\1END;\n")]),
    "old_run_row": ("the run row as before issue 10 (no pid, backend_start from pg_stat_get_activity, routine, "
                    "mode, batch_size)",
                    [_sub(r"INSERT INTO specql\.batch_operation_runs\n.*?'per_batch', _batch_size\);",
                          OLD_RUN_ROW.replace("\\", "\\\\"))]),
    "cancel_probe_every_10": ("a proposal: the cancel probe every 10th batch only (nested IF: `IF a AND EXISTS "
                              "(...)` would still start the executor every batch)",
                              [_sub(r"\n( *)IF EXISTS \(SELECT 1 FROM specql\.batch_operation_cancellations(.*?)END IF;",
                                    "\n\\1IF _result.batch_count % 10 = 0 THEN IF EXISTS (SELECT 1 FROM "
                                    "specql.batch_operation_cancellations\\2END IF; END IF;")]),
    # commit_per_batch procedures (instructions.py --procedures):
    "no_run_row_update": ("procedures: without the per-batch UPDATE of the run row (counts, heartbeat, position)",
                          [_sub(r"\n *-- The run row with where the run got to[^\n]*\n *UPDATE specql\."
                                r"batch_operation_runs\n.*?WHERE operation_id = _result\.operation_id;", "")]),
    "no_params_hash": ("procedures: without the hash of a large argument in the run row's params (what a "
                       "resume compares; it was md5(ids::text) until the numbers below replaced it)",
                       [_sub(r"(?:hash_array_extended|jsonb_hash_extended)\([^()]*, 0\)", "0")]),
}
PROCEDURE_ONLY = ("no_run_row_update", "no_params_hash")
PIECES["all_pieces"] = ("all of the above: the loop as before issue 10 (the settings are still read once)",
                        [e for name in ("no_cancel_probe", "no_progress_check", "const_batch", "no_retry_loop",
                                        "old_run_row") for e in PIECES[name][1]])


def piece_sql(base: str, routine: str, piece: str, batch_size: int) -> str:
    """The CREATE FUNCTION of routine with the piece's edits, named bench.<routine>__<piece>."""
    text = base
    for edit in PIECES[piece][1]:
        try:
            text = edit(text, batch_size)
        except LookupError as e:
            raise SystemExit(f"{piece}: an edit does not match the generated {routine} (templates changed?): {e}")
    name = f"{routine}__{piece}"
    text = re.sub(rf"(FUNCTION|PROCEDURE) {B.SCHEMA}\.{routine}\(", rf"\1 {B.SCHEMA}.{name}(", text, count=1)
    return text.replace(f"{routine}.", f"{name}.")  # parameter qualifiers


def create_variants(conn, migrations: Path, pieces: list[str], batch_size: int) -> list[str]:
    """Create every piece for every bench routine; returns the created routine names."""
    unknown = [p for p in pieces if p not in PIECES]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(PIECES)}")
    names = []
    for _label, routine, _target in B.CASES.values():
        base = routine_text(migrations, routine)
        for piece in pieces:
            try:
                sql = piece_sql(base, routine, piece, batch_size)
            except SystemExit as e:
                B.log(f"skipped: {e}")  # e.g. no large argument to fingerprint
                continue
            conn.execute(sql)
            names.append(f"{routine}__{piece}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, choices=list(B.CASES))
    ap.add_argument("--show", required=True, choices=list(PIECES), help="print this variant's SQL")
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args(argv)
    from specql.generate import generate
    with tempfile.TemporaryDirectory(prefix="specql-pieces-") as tmp:
        work = Path(tmp)
        generate([str(B.prepare_entities(args.batch_size, work))], work / "generated")
        routine = B.CASES[args.case][1]
        base = routine_text(work / "generated" / "migrations", routine)
        print(piece_sql(base, routine, args.show, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
