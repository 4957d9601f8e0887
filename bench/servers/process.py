"""What every launcher here does with its server process: wait until it listens, stop it by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable

__all__ = ["free_port", "wait_listening", "stop_process"]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, name: str, errors: Callable[[], str]) -> None:
    """Return once ``127.0.0.1:port`` accepts a connection.

    Raises ``RuntimeError`` (with ``errors()``, the server's own words) if the process
    exits first or ``timeout`` passes; the caller stops the process then.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {errors()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s: {errors()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float, first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` to the PID, then SIGTERM, then SIGKILL, waiting after each (no zombie is left)."""
    for sig, wait in ((first, timeout), (signal.SIGTERM, 3.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait(5)
