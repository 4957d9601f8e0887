"""What scenarios share during one run: sizes, the upstream, started systems, results.

Systems start lazily, once per run, and are all stopped (by PID) when the run ends,
whatever happened. A system that cannot start is remembered with its reason, and
every scenario that wanted it records "not run: <why>" instead of dropping it.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import Progress
from .servers.link import SharedLink
from .systems.base import ImageFile, System, SystemUnavailable, free_port
from .systems.glance import GlanceSystem
from .systems.imgproxy import ImgproxySystem
from .systems.nginx_systems import NginxCache, NginxDirect, Upstream
from .systems.procs import TreeMeter, TreeUsage

__all__ = ["Profile", "RunContext", "ScenarioResult", "summarize", "percentile"]

MiB = 1 << 20


@dataclass(frozen=True)
class Profile:
    """Workload sizes. ``quick`` keeps a run under 5 minutes on 2 cores."""

    quick: bool
    repeats: int
    storm_nodes: tuple[int, ...]
    storm_images: tuple[int, ...]
    storm_image_size: int
    upstream_rate: int
    warm_image_size: int
    warm_nodes: tuple[int, ...]
    range_image_size: int
    range_count: int
    upload_sizes: tuple[int, ...]
    growth_images: int
    growth_image_size: int
    growth_cache_max: int
    cached_size: int = 256 * MiB
    cached_streams: tuple[int, ...] = (1, 32)
    storm_repeats: int = 1  # every storm step is cold (fresh images): repeats cost a whole fill each
    herd_clients: int = 16
    herd_image_size: int = 64 * MiB
    herd_rate: int = 32 * MiB
    meta_images: int = 1000  # created in every system of the metadata scenario (Glance makes ~15/s)
    meta_connections: tuple[int, ...] = (16,)
    meta_step_seconds: float = 10.0  # how long wrk drives each show/list step
    meta_baseline: str = ""  # another imgproxy checkout, measured beside this one (baseline-1w/2w)
    stores_image_size: int = 64 * MiB
    edge_nodes: int = 16
    edge_image_size: int = 32 * MiB
    import_size: int = 1024 * MiB

    @classmethod
    def make(cls, quick: bool) -> "Profile":
        if quick:
            return cls(
                quick=True, repeats=1, storm_nodes=(8, 32), storm_images=(1, 5), storm_image_size=16 * MiB,
                upstream_rate=32 * MiB, warm_image_size=256 * MiB, warm_nodes=(1, 8), range_image_size=64 * MiB,
                range_count=8, upload_sizes=(64 * MiB, 256 * MiB), growth_images=48, growth_image_size=4 * MiB, growth_cache_max=128 * MiB,
                import_size=256 * MiB,
            )
        return cls(
            # Sized so a full run fits in 30 minutes on 2 cores: every node hashes what it reads.
            quick=False, repeats=2, storm_nodes=(8, 32, 64), storm_images=(1, 5), storm_image_size=128 * MiB,
            upstream_rate=64 * MiB, warm_image_size=512 * MiB, warm_nodes=(1, 8, 32), range_image_size=1024 * MiB,
            range_count=32, upload_sizes=(1024 * MiB, 4096 * MiB), growth_images=200, growth_image_size=16 * MiB, growth_cache_max=1024 * MiB,
            cached_size=1024 * MiB, herd_image_size=1024 * MiB, herd_rate=100 * MiB,
            meta_step_seconds=20.0, stores_image_size=1024 * MiB, edge_nodes=64, edge_image_size=256 * MiB,
        )


@dataclass
class ScenarioResult:
    """One scenario's rows (one per system x parameters) plus notes and failures.

    ``failures`` is non-empty when a node received wrong bytes: the run then exits non-zero.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    plot: dict[str, str] = field(default_factory=dict)

    def not_run(self, system: str, why: str, **params: Any) -> None:
        self.rows.append({"system": system, **params, "status": f"not run: {why}"})

    def add_checked(self, row: dict[str, Any], samples: list[dict[str, Any]], progress: Progress, *,
                    label: str, status_prefix: str = "", what: str) -> None:
        """Append ``row`` with its failure count and status from ``samples``; a wrong body is a
        failure of the run (``label``: what failed, ``what``: how it failed) and an alarm now."""
        fails = sum(s["failures"] for s in samples)
        row["failures"] = fails
        row["status"] = "ok" if not fails else f"FAILED: {status_prefix.format(fails=fails)}{row['failure_detail']}"
        if fails:
            self.failures.append(f"{label}: {fails} {what} ({row['failure_detail']})")
            progress.alarm(self.failures[-1])
        self.rows.append(row)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summarize(samples: list[dict[str, Any]], spread: tuple[str, ...] = ()) -> dict[str, Any]:
    """Median of every numeric metric over repeats; ``key_min``/``key_max`` for ``spread`` keys."""
    out: dict[str, Any] = dict(samples[0])
    for key, value in samples[0].items():
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float)) and not isinstance(s.get(key), bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            med = statistics.median(values)
            out[key] = round(med, 4) if isinstance(med, float) else med
            if key in spread and len(values) > 1:
                out[f"{key}_min"], out[f"{key}_max"] = round(min(values), 4), round(max(values), 4)
    out["repeats"] = len(samples)
    return out


class RunContext:
    """Owns the work dir, the upstream and every started system of one run."""

    def __init__(self, work: Path, profile: Profile, progress: Progress, systems: tuple[str, ...] = ()) -> None:
        self.work = work
        self.only_systems = set(systems)  # empty: every system
        self.profile = profile
        self.progress = progress
        self.upstream_root = work / "upstream-files"
        self.local_root = work / "local-files"
        self._systems: dict[str, System] = {}
        self._failed: dict[str, str] = {}
        self._upstream: Upstream | None = None
        self._links: dict[int, SharedLink] = {}

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            up = Upstream(self.work / "upstream", self.upstream_root)
            self.upstream_root.mkdir(parents=True, exist_ok=True)
            up.start()  # no upstream, no scenario: let SystemUnavailable propagate
            self._upstream = up
        return self._upstream

    def shared_link(self, rate: int) -> SharedLink:
        """A relay in front of the upstream whose connections share ``rate`` bytes/s (started once per rate)."""
        link = self._links.get(rate)
        if link is None:
            upstream = self.upstream.url.removeprefix("http://")
            link = SharedLink(free_port(), upstream, rate, self.work / "link" / f"{rate}.log").start()
            self._links[rate] = link
        return link

    def link_url_for(self, image: ImageFile, rate: int) -> str:
        """``image`` on the upstream, reached through the shared link of ``rate``."""
        return f"{self.shared_link(rate).url}/{image.name}"

    def _build(self, name: str) -> System:
        w = self.work / "systems" / name
        if name == "imgproxy-1w":
            return ImgproxySystem(w, workers=1)
        if name == "imgproxy-2w":
            return ImgproxySystem(w, workers=2)
        if name == "imgproxy-1w-nometrics":  # what metrics and request lines cost (cached_download)
            return ImgproxySystem(w, workers=1, config={"metrics": False, "request_log": False}, name=name)
        if name == "glance":
            return GlanceSystem(w)
        if name == "nginx-direct":
            self.local_root.mkdir(parents=True, exist_ok=True)
            return NginxDirect(w, self.local_root)
        if name in ("nginx-cache-lock", "nginx-slice-lock"):
            link = self.shared_link(self.profile.herd_rate).url  # for the herd's shared-link runs
            return NginxCache(w, self.upstream.url, slice_size=4 * MiB if name == "nginx-slice-lock" else 0,
                              link_url=link)
        raise KeyError(name)

    def system(self, name: str) -> System:
        """The started system ``name``; raises SystemUnavailable (remembered) if it cannot start."""
        if name in self._failed:
            raise SystemUnavailable(self._failed[name])
        if name not in self._systems:
            self.progress.note(f"starting {name}")
            system = self._build(name)
            try:
                system.start()
            except SystemUnavailable as exc:
                self._failed[name] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise SystemUnavailable(self._failed[name]) from exc
            self._systems[name] = system
        return self._systems[name]

    def add_system(self, name: str, system: System) -> System:
        """Start and own a specially configured system (e.g. a small cache bound)."""
        system.start()
        self._systems[name] = system
        return system

    @contextmanager
    def metered(self, system: System) -> Iterator[TreeUsage]:
        """Peak RSS and CPU seconds of ``system``'s process tree over the block."""
        assert system.pid is not None
        meter = TreeMeter(system.pid).start()
        try:
            yield meter.usage
        finally:
            meter.stop()

    def stop_system(self, name: str, *, remove: bool = False) -> None:
        """Stop one system now; ``remove`` also deletes its work dir (caches of many GiB)."""
        system = self._systems.pop(name, None)
        if system is not None:
            system.stop()
        if remove:
            shutil.rmtree(self.work / "systems" / name, ignore_errors=True)

    def release(self, keep: set[str]) -> None:
        """Stop and remove every started system not in ``keep``: a full run would fill the disk otherwise."""
        for name in [n for n in self._systems if n not in keep]:
            self.progress.note(f"stopping {name} (no later scenario uses it)")
            self.stop_system(name, remove=True)

    def stop_all(self) -> None:
        for name, system in reversed(list(self._systems.items())):
            try:
                system.stop()
            except Exception as exc:  # stopping the rest matters more than this one's error
                self.progress.note(f"stopping {name} failed: {exc}")
        self._systems.clear()
        for link in self._links.values():
            link.stop()
        self._links.clear()
        if self._upstream is not None:
            self._upstream.stop()
            self._upstream = None

    def system_or_row(self, result: ScenarioResult, name: str, **params: Any) -> System | None:
        """The system, or None after recording a "not run" row for it (no row if the user left it out)."""
        if self.only_systems and name not in self.only_systems:
            return None
        try:
            return self.system(name)
        except SystemUnavailable as exc:
            result.not_run(name, str(exc), **params)
            return None


ScenarioFn = Callable[[RunContext], ScenarioResult]
