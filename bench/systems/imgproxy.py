"""imgproxy itself, as the benchmark runs it: ``python -m imgproxy serve --noauth`` on a fresh data dir
(or with the ``auth`` its config names)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from .base import SystemUnavailable, free_port
from .imageapi import ImageApiSystem
from .procs import stop_tree

__all__ = ["ImgproxySystem", "toml_text"]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):  # a table inside a table: inline
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    return f'"{value}"'


def toml_text(config: Mapping[str, object]) -> str:
    """TOML for imgproxy settings: flat keys (strings, numbers, booleans), then a
    ``[table]`` for each mapping value (a store's options, e.g. ``[swift]``)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in config.items() if not isinstance(value, Mapping)]
    for table, options in config.items():
        if isinstance(options, Mapping):
            if options and all(isinstance(v, Mapping) for v in options.values()):
                lines += toml_text({f"{table}.{sub}": v for sub, v in options.items()}).splitlines()  # [stores.NAME]
                continue
            lines.append(f"[{table}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


class ImgproxySystem(ImageApiSystem):
    """One ``imgproxy serve`` process tree (uvicorn master + workers), stopped by PID."""

    kind = "imgproxy"

    def __init__(self, root: Path, *, workers: int = 1, config: Mapping[str, object] | None = None,
                 source: Path | None = None, name: str | None = None) -> None:
        super().__init__(name or f"imgproxy-{workers}w")
        # Another checkout of imgproxy to run instead of this one (a before/after comparison).
        self.source = None if source is None else Path(source).resolve()
        self.root = Path(root).resolve()
        self.workers = workers
        # A cache that holds every benchmark image (1-4 GiB): a warm read must be a cache hit.
        self.config = {"log_level": "warning", "cache_max_size": 64 << 30, **(config or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self, timeout: float = 30.0) -> "ImgproxySystem":
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "imgproxy.toml"
        conf.write_text(toml_text(self.config))
        args = [
            sys.executable, "-m", "imgproxy", "serve", *([] if "auth" in self.config else ["--noauth"]),
            "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--workers", str(self.workers), "--config", str(conf),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        log = (self.root / "server.log").open("ab")
        # ``python -m`` puts the working directory first on sys.path: run another checkout from its own.
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.source)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemUnavailable(f"imgproxy exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/versions", timeout=1.0).status_code in (200, 300):
                    self.pid = self.proc.pid
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SystemUnavailable(f"imgproxy did not answer /versions within {timeout}s: {self.log_tail()}")

    def restart(self, **config: object) -> "ImgproxySystem":
        """Stop, change settings, start again on the same port and data dir (as an operator would)."""
        self.stop()
        self.config = {**self.config, **config}
        return self.start()

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_tree(self.proc)
        self.proc = None
        self.pid = None
