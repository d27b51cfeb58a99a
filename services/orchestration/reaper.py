"""Stops the local Ray a sweep driver started when that driver is killed outright (SIGKILL, OOM
killer): Ray's GCS and raylet follow their driver, but its agents (dashboard, runtime env)
outlive it by minutes, holding memory and ports.

The driver starts ``python -m services.orchestration.reaper <driver pid>`` with a pipe on its stdin. While
the pipe is open, the reaper notes the driver's descendants (pid and start time, once a second).
"done" on the pipe means a clean shutdown: it exits. End of file without it means the driver
died: it SIGKILLs every noted process that still runs (same pid, same start time), then exits.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 1.0


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            out[int(entry.name)] = (int(fields[1]), fields[19])
    return out


def descendants(root: int, exclude: int) -> dict[int, str]:
    """pid -> start time of every descendant of ``root`` (not ``exclude``)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid != exclude and pid not in found:
            found[pid] = table[pid][1]
            stack.extend(children.get(pid, []))
    return found


def watch(driver: int) -> None:
    noted: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "done":
                return
            if not line:  # end of file: the driver died
                break
        noted.update(descendants(driver, os.getpid()))
    now = _table()
    for pid, start in noted.items():
        if pid in now and now[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Reaper:
    """The driver's handle: ``stop()`` after a clean ``ray.shutdown()``."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.orchestration.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    def stop(self) -> None:
        try:
            assert self._proc.stdin is not None  # started with a pipe
            self._proc.stdin.write("done\n")
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
