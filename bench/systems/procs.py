"""Process-tree accounting from /proc: resident memory and CPU seconds of a server.

A server is a root PID plus its descendants (uvicorn workers, uWSGI workers,
nginx workers). :class:`TreeMeter` samples the tree in a background thread so a
scenario can report the peak RSS (sum over live processes at one instant) and the
CPU seconds the tree used while the meter ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

__all__ = ["TreeMeter", "TreeUsage", "tree_pids", "live_tree", "cpu_seconds", "rss_bytes", "is_running", "stop_tree"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces; fields after the last ')' are fixed.
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def live_tree(proc: "subprocess.Popen[bytes]") -> list[int]:
    """The server ``proc``'s PID and its workers' (none once it has exited)."""
    return tree_pids(proc.pid) if proc.poll() is None else []


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user+system CPU seconds of each live process, including its reaped children."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14..17 (1-based); here offset by 3.
        out[pid] = sum(int(x) for x in fields[11:15]) / _TICKS
    return out


def rss_bytes(pids: list[int]) -> int:
    """Sum of resident memory of ``pids`` (pages from /proc/PID/statm)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


@dataclass
class TreeUsage:
    peak_rss: int = 0
    cpu_s: float = 0.0


class TreeMeter:
    """Samples one process tree every ``interval`` seconds between ``start()`` and ``stop()``.

    CPU seconds are the growth of each process's counter over the metered span;
    processes that appear mid-span count from zero. Not thread-safe: one owner.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.usage = TreeUsage()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        pids = tree_pids(self.root)
        cpu = cpu_seconds(pids)
        for pid, value in cpu.items():
            self._first.setdefault(pid, 0.0)  # born after start(): all its CPU is ours
            self._last[pid] = value
        self.usage.peak_rss = max(self.usage.peak_rss, rss_bytes(pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "TreeMeter":
        self._first = cpu_seconds(tree_pids(self.root))
        self._last = dict(self._first)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"meter-{self.root}")
        self._thread.start()
        return self

    def stop(self) -> TreeUsage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.usage.cpu_s = round(sum(self._last[p] - self._first.get(p, 0.0) for p in self._last), 3)
        return self.usage


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone or a zombie; True if it went in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return not is_running(pid)


def stop_tree(proc: "subprocess.Popen[bytes]", timeout: float = 20.0, tree: list[int] | None = None) -> None:
    """SIGTERM the server ``proc`` (SIGKILL after ``timeout``) and wait until its whole
    process tree is gone: workers may still be exiting when the master has; one still there
    10 s later gets SIGKILL. ``tree``: the tree as read before the caller signalled ``proc``."""
    pids = tree if tree is not None else live_tree(proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    wait_gone(proc.pid, 3)
    for pid in pids:
        if not wait_gone(pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
