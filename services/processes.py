"""Which process is which: a pid plus its start time names one process for good.

Used to tell the services ``make up`` started and the detached sweep drivers from whatever
process later reuses their pid. Linux ``/proc`` only; imports nothing of samplewise.
"""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie (exited, not yet reaped) is not running


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, names one process for
    good, since a pid is reused only by a process that starts later."""
    fields = stat_fields(pid)
    return fields[19] if fields else None


def ours(record: dict) -> bool:
    """Whether the process ``record`` names (pid and start time) still runs."""
    return alive(record["pid"]) and start_time(record["pid"]) == record.get("start")


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def leftovers(record: dict) -> list[int]:
    """Live processes of the group a recorded leader started, once the leader itself is gone
    (MLflow's workers outlive a killed leader and keep its port). A process group id is not
    reused while any process of the group lives, so these are the leader's."""
    if alive(record["pid"]):
        return []  # the leader runs (ours or, if its pid was reused, someone else's group)
    return group_alive(record["pid"])
