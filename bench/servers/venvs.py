"""Pinned tools in venvs of their own, under ``~/.cache/imgproxy-bench``.

OpenStack services pin their own versions of half of PyPI (oslo.*, eventlet, SQLAlchemy...),
which must not meet ours, so each lives in its own venv, installed once. The marker file is
written last, so an interrupted install is redone from scratch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["bench_venv", "venv_installed", "install_venv"]

_MARKER = ".imgproxy-bench-installed"


def bench_venv(name: str) -> Path:
    """``~/.cache/imgproxy-bench/<name>-venv``; ``IMGPROXY_BENCH_<NAME>_VENV`` overrides."""
    env = os.environ.get(f"IMGPROXY_BENCH_{name.upper()}_VENV")
    return Path(env) if env else Path.home() / ".cache" / "imgproxy-bench" / f"{name}-venv"


def venv_installed(venv: Path, packages: Sequence[str], script: str) -> bool:
    """Whether ``venv`` holds exactly ``packages`` (per its marker) and ``bin/<script>``."""
    marker = venv / _MARKER
    return marker.exists() and marker.read_text().split() == list(packages) and (venv / "bin" / script).exists()


def install_venv(venv: Path, packages: Sequence[str], script: str, *, about: str = "",
                 log: IO[str] = sys.stderr) -> Path:
    """Create ``venv`` with ``packages`` pip-installed; a no-op when already done.

    Raises ``RuntimeError`` naming the install log when pip fails.
    """
    if venv_installed(venv, packages, script):
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench: installing {' '.join(packages)} into {venv}{f' ({about})' if about else ''}", file=log)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    logfile = venv.parent / f"{venv.name.removesuffix('-venv')}-install.log"
    with logfile.open("wb") as out:
        done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed; see {logfile}")
    (venv / _MARKER).write_text("\n".join(packages) + "\n")
    return venv
