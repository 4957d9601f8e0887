"""Run ``imgproxy serve`` as a real process on a loopback port, for tests.

The process is stopped by PID (SIGTERM, then SIGKILL) by whoever started it,
even when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from bench.systems.imgproxy import toml_text

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One ``imgproxy serve`` process with its own data dir and log file."""

    def __init__(
        self,
        data_dir: Path,
        *,
        noauth: bool = False,
        workers: int = 1,
        config: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.noauth = noauth
        self.workers = workers
        self.config = dict(config or {})
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path | None:
        if not self.config:
            return None
        path = self.data_dir.parent / f"{self.data_dir.name}-config.toml"
        path.write_text(toml_text(self.config))
        return path

    @property
    def admin_token(self) -> str:
        from imgproxy.tokens import read_admin_token

        return read_admin_token(self.data_dir / "tokens.json")

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "imgproxy", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        args += ["--workers", str(self.workers)]
        if self.noauth:
            args.append("--noauth")
        config = self._write_config()
        if config is not None:
            args += ["--config", str(config)]
        args += self.extra_args
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        env.update(self.env)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imgproxy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/versions", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"imgproxy did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
