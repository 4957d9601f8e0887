"""The benchmark scenarios, in the order a full run executes them."""

from __future__ import annotations

from collections.abc import Callable

from ..runner import RunContext, ScenarioResult
from . import boot_storm, cached_download, edge, growth, herd, imports, metadata, ranged, stores, upload, warm_reads

__all__ = ["SCENARIOS", "SCENARIO_SYSTEMS"]

SCENARIOS: dict[str, Callable[[RunContext], ScenarioResult]] = {
    "boot_storm": boot_storm.run,
    "herd": herd.run,
    "warm_reads": warm_reads.run,
    "ranged": ranged.run,
    "cached_download": cached_download.run,
    "upload": upload.run,
    "metadata": metadata.run,
    "growth": growth.run,
    "stores": stores.run,
    "edge": edge.run,
    "import": imports.run,
}

SCENARIO_SYSTEMS: dict[str, tuple[str, ...]] = {
    "boot_storm": boot_storm.SYSTEMS,
    "herd": herd.SYSTEMS,
    "warm_reads": warm_reads.SYSTEMS,
    "ranged": ranged.SYSTEMS,
    "cached_download": cached_download.SYSTEMS,
    "upload": upload.SYSTEMS,
    "metadata": metadata.SYSTEMS,
    "growth": growth.SYSTEMS,
    "stores": stores.SYSTEMS,
    "edge": edge.SYSTEMS,
    "import": imports.SYSTEMS,
}
"""The shared systems each scenario uses, so a run can stop those no later scenario needs."""
