"""One writer for every folder specql generates into (migrations/, tests/).

Why one: the migrations and the generated tests used to have a writer each, and they
drifted — the tests' writer never removed a module whose operation was renamed, and its
`--check` called such an orphan up to date, so it failed later at run time. Here the
planned files of a folder are the whole truth about that folder's generated part:

- write: each planned file is written atomically (temp file + rename), and only when
  its bytes differ, so an unchanged file keeps its mtime;
- check: planned files that are missing or differ are stale, and files this generator
  wrote before but no longer plans are orphans ("not generated any more");
- orphans are removed on write. Only names matching the folder's own patterns
  (`*.sql` in migrations/, `test_*.py` in tests/) are ever considered, so a user's other
  files in the folder (a README, a conftest.py, notes) are never touched.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderResult:
    """What a sync did (or, with check, would do) to one folder."""

    folder: Path
    written: list[Path] = field(default_factory=list)  # every planned file, changed or not
    changed: list[Path] = field(default_factory=list)  # planned files whose bytes were (re)written
    removed: list[Path] = field(default_factory=list)  # orphans deleted
    stale: list[str] = field(default_factory=list)  # with check: planned names missing or different
    orphans: list[str] = field(default_factory=list)  # names generated before, not planned any more

    def problems(self) -> list[str]:
        """With check: one line per stale or orphan file, as `--check` reports them."""
        return self.stale + [f"{name} (not generated any more)" for name in self.orphans]


def owned_files(folder: Path, patterns: Sequence[str]) -> dict[str, Path]:
    """Files directly in `folder` whose names match one of the generator's patterns."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)}


def sync(folder: Path, planned: Mapping[str, str], patterns: Sequence[str], *,
         check: bool = False) -> FolderResult:
    """Make `folder`'s generated files exactly `planned` ({file name: content}).

    With check, nothing is written (the folder is not even created): `stale` and `orphans`
    say what a write would change.
    """
    folder = Path(folder)
    for name in planned:
        if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            raise ValueError(f"{name} does not match the patterns {list(patterns)} of {folder}")
    existing = owned_files(folder, patterns)
    result = FolderResult(folder)
    result.orphans = [name for name in existing if name not in planned]
    for name, content in planned.items():
        path = folder / name
        same = name in existing and _read(path) == content
        if check:
            if not same:
                result.stale.append(name)
            continue
        if not same:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, content)
            result.changed.append(path)
        result.written.append(path)
    if not check:
        for name in result.orphans:
            existing[name].unlink()
            result.removed.append(existing[name])
    return result


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_atomic(path: Path, content: str) -> None:
    """Write through a temporary file in the same folder: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".specql-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
