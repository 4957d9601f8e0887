"""Which process owns a piece of work, and whether that process still lives.

An upload in progress is marked with its process (pid plus the process's start time,
so a reused pid is not mistaken for the old owner). After a crash (kill -9) the mark
outlives the process; start-up recovery and the cleaner loop find such marks and undo
the work (an image left ``saving`` goes back to ``queued``).
"""

from __future__ import annotations

import functools
import os

__all__ = ["current_owner", "owner_alive"]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after it.
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[19].decode()


@functools.cache
def current_owner() -> str:
    pid = os.getpid()
    return f"{pid}:{_start_time(pid) or '?'}"


def owner_alive(owner: str) -> bool:
    pid_text, _, start = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return _start_time(pid) == start
