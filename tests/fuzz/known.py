"""Defect classes the fuzzer finds that are still open, each with the issue text it matches.

The CI test (tests/test_fuzz.py) tolerates a failure only when it is listed here: its
failure class and one of the case's mutation kinds both match an entry. As a fix lands,
delete its entry; the test then asserts that class for good.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    failure: str  # a failure class from checks.py / apply.py / worker.py (fnmatch pattern)
    kind: str  # a mutation kind from mutate.py (fnmatch pattern)
    issue: str  # the issue 8 text it matches


KNOWN: list[Known] = [
    Known("apply_failure", "*@field_default",
          "Generate exits 0, the SQL then fails to apply: a field default {sql: ...} whose expression is of "
          "another type than its column (now() for an integer) -> CREATE TABLE fails. Constants are checked "
          "(a string or number of the wrong type is refused); other expressions would need the server to type them"),
]


def known_defect(case, failure: str) -> Known | None:
    for entry in KNOWN:
        if fnmatch.fnmatchcase(failure, entry.failure) and any(
                fnmatch.fnmatchcase(kind, entry.kind) for kind in case.kinds):
            return entry
    return None
