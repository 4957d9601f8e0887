"""With several workers, one process runs start-up recovery and the background loops (a file
lock decides: DESIGN.md), and another takes them over when that one dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from bench.systems.procs import is_running, tree_pids
from tests.server import ServerProcess


def _holders(server: ServerProcess) -> list[int]:
    """The pids holding the loops lock (from /proc/locks and the lock file's inode)."""
    try:
        inode = os.stat(server.data_dir / "loops.lock").st_ino
    except FileNotFoundError:
        return []
    holders = []
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
            if fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(inode):
                holders.append(int(fields[4]))
    return holders


def _wait(probe: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not probe() and time.monotonic() < deadline:
        time.sleep(0.1)
    return probe()


def test_one_worker_runs_the_loops_and_another_takes_over(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(workers=2, config={"clean_interval": 1})
    assert server.proc is not None
    master = server.proc.pid
    assert _wait(lambda: len(_holders(server)) == 1)
    [holder] = _holders(server)
    assert holder != master and holder in tree_pids(master)  # a worker, not the supervisor
    time.sleep(1.5)
    assert _holders(server) == [holder]  # the other worker waits; it does not run the loops too

    os.kill(holder, signal.SIGKILL)
    seen: list[int] = []

    def taken_over() -> bool:
        seen[:] = _holders(server)  # one reading per probe: the lock may change hands between two
        return bool(seen) and seen[0] != holder

    assert _wait(taken_over), server.log()
    [successor] = seen
    assert is_running(successor) and successor in tree_pids(master)
