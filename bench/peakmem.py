#!/usr/bin/env python
"""Peak private memory (RssAnon, kB) of one database's backends and of one client process,
polled every 10 ms by a process of its own.

It used to be a thread of the benchmark itself, which listed /proc and read every process's
command line every 10 ms: that thread took the client's GIL away from the thread that feeds
the staging COPY and a core away from the server, and slowed the side that uses both cores
(an import: client, staging backend, routine backend) more than the side that uses one (a
plain COPY): csv_bench.py's import took 7.05 s with it and 5.3-5.9 s without, COPY 3.6 s and
2.6-3.4 s (2026-12-01, quiet machine). Now the poller is another process, reads a process's
command line once (when it first sees its pid), and lists /proc every 50 ms only.

    with PeakMemory(dbname) as mem:
        ...
    mem.backend, mem.client   # kB
    mem.backend_cpu           # CPU seconds the database's backends used meanwhile (their sum)

The CPU seconds tell whether two cores can do an import's work in the time a target allows
(bench/README.md, issue 12). A backend counts up to its last reading (one every INTERVAL) and
is found when /proc is listed (every RESCAN readings): one that lives less than that is missed.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

INTERVAL = 0.01  # seconds between two readings of the known processes
RESCAN = 5  # list /proc for new backends every RESCAN readings


def _anon(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu(pid: str) -> float | None:
    """CPU seconds (user + system) of process `pid`, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll(dbname: str, client: str) -> tuple[int, int, float]:
    """Poll until standard input closes; the peaks (backend, client) in kB and the CPU seconds
    the database's backends used since the first reading."""
    marker = f" {dbname} ".encode()
    seen: dict[str, bool] = {}  # pid -> is a backend of the database
    first: dict[str, float] = {}  # pid -> CPU seconds at its first reading (0 when it started since)
    last: dict[str, float] = {}  # pid -> CPU seconds at its latest reading
    backend = peak_client = 0
    n = 0
    while True:
        if n % RESCAN == 0:
            for pid in os.listdir("/proc"):
                if pid.isdigit() and pid not in seen:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    seen[pid] = cmd.startswith(b"postgres: ") and marker in cmd
                    if seen[pid] and n > 0:
                        first[pid] = 0.0  # a backend that started after the first reading
        for pid, ours in seen.items():
            if ours:
                backend = max(backend, _anon(pid))
                cpu = _cpu(pid)
                if cpu is not None:
                    first.setdefault(pid, cpu)
                    last[pid] = cpu
        n += 1
        peak_client = max(peak_client, _anon(client))
        if select.select([sys.stdin], [], [], INTERVAL)[0]:
            if not sys.stdin.buffer.read1(4096):
                return backend, peak_client, sum(last[pid] - first[pid] for pid in last)


class PeakMemory:
    """The poller as a child process for the duration of a `with` block."""

    def __init__(self, dbname: str):
        self.dbname = dbname
        self.backend = self.client = 0
        self.backend_cpu = 0.0

    def __enter__(self) -> "PeakMemory":
        self._proc = subprocess.Popen([sys.executable, __file__, self.dbname, str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.05)  # its first reading before the work starts
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._proc.communicate()
        backend, client, cpu = out.split()
        self.backend, self.client, self.backend_cpu = int(backend), int(client), float(cpu)


if __name__ == "__main__":
    print(*poll(sys.argv[1], sys.argv[2]))
