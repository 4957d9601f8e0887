"""Directories under the data dir that the ops parts share. No import of prometheus_client here.

The metrics directory (prometheus_client's multiprocess mode):

prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` once, when it is first imported, and
then keeps every counter of the process in files there; a scrape sums the files of all
processes. ``imgproxy serve`` names ``<data_dir>/metrics`` before it starts the workers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["multiprocess_dir", "prepare_multiprocess_dir", "run_dir"]

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    value = os.environ.get(_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty ``path`` (the counters of a previous run) and name it for this process and the
    workers it starts. Call before anything in this process imports prometheus_client."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[_ENV] = str(path)


def run_dir(data_dir: Path) -> Path:
    """Where the workers leave their fill boards (:mod:`.history`)."""
    return data_dir / "run"
