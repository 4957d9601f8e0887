"""wrk, a C HTTP load generator, as the harness drives it: so that at thousands of requests/s
the client is not the limit (a Python client is, near a few thousand).

Each request picks a random path from a list (a Lua script reads it per wrk thread), over
``connections`` keep-alive connections for ``seconds``. Debian's package: ``apt-get install wrk``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkRun", "WrkUnavailable", "run_wrk", "wrk_binary"]

_SCRIPT = """\
local paths = {}
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
function request()
  return wrk.format(nil, paths[math.random(#paths)])
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


class WrkUnavailable(RuntimeError):
    """wrk is not installed."""


@dataclass
class WrkRun:
    """One wrk run: completed requests, requests/s, latency percentiles (ms) and errors
    (connect, read, write and timeout socket errors plus non-2xx/3xx answers)."""

    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    non_2xx: int
    socket_errors: dict[str, int]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkUnavailable("wrk is not installed (apt-get install wrk)")
    return found


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> WrkRun:
    """The figures of wrk's ``--latency`` report; ValueError if ``out`` is not one."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done is None or rate is None:
        raise ValueError(f"not a wrk report: {out[-500:]!r}")
    pct = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(non_2xx.group(1)) if non_2xx else 0
    return WrkRun(
        requests=int(done.group(1)), seconds=_ms(done.group(2), done.group(3)) / 1e3, req_per_s=float(rate.group(1)),
        p50_ms=pct.get("50"), p99_ms=pct.get("99"), errors=bad + sum(socket_errors.values()), non_2xx=bad,
        socket_errors=socket_errors,
    )


def run_wrk(base_url: str, paths: list[str], *, connections: int, seconds: float, work: Path,
            headers: dict[str, str] | None = None, threads: int = 2, timeout: float = 30.0) -> WrkRun:
    """GET random ``paths`` of ``base_url`` for ``seconds`` over ``connections`` connections;
    a request unanswered after ``timeout`` seconds counts as an error (wrk's default, 2 s,
    would count Glance's slow lists as errors)."""
    work.mkdir(parents=True, exist_ok=True)
    script, listing = work / "random_path.lua", work / "paths.txt"
    script.write_text(_SCRIPT)
    listing.write_text("".join(f"{p}\n" for p in paths))
    args = [wrk_binary(), f"-t{max(1, min(threads, connections))}", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", f"--timeout={timeout:g}s", "--latency", "-s", str(script)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run([*args, base_url, "--", str(listing)], capture_output=True, text=True,
                          timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-500:]}")
    return parse_wrk(done.stdout)
