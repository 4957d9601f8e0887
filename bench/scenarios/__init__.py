"""The benchmark scenarios, in the order a full run executes them."""

from __future__ import annotations

from collections.abc import Callable

from ..runner import RunContext, ScenarioResult
from . import boot_storm, cached_download, growth, metadata, ranged, upload, warm_reads

__all__ = ["SCENARIOS"]

SCENARIOS: dict[str, Callable[[RunContext], ScenarioResult]] = {
    "boot_storm": boot_storm.run,
    "warm_reads": warm_reads.run,
    "ranged": ranged.run,
    "cached_download": cached_download.run,
    "upload": upload.run,
    "metadata": metadata.run,
    "growth": growth.run,
}
