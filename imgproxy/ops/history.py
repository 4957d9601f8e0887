"""What the status page shows besides the figures of the moment: the last hour, and the fills
of every worker.

- :class:`History`: a ring of the cache-wide counters sampled every 10 s (an hour of them).
  The counters are LMDB's, summed over all processes, so every worker's ring tells the same
  story and any worker can answer the page.
- Fill boards: each worker leaves the fills it runs in ``<data_dir>/run/fills-<pid>.json``
  every tick (and removes it when it has none), so the page shows the fills of all workers.
- :func:`sample_loop`: the per-worker task that does both, and keeps the
  ``imgproxy_fills_in_flight`` gauge and the ``metrics_listen`` figures current.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache import ImageCache

from .figures import save_figures
from .paths import multiprocess_dir, run_dir

if TYPE_CHECKING:
    from ..edge.service import EdgeService
    from .metrics import Metrics
    from ..service import Service

__all__ = ["History", "Point", "fill_board", "read_boards", "sample_loop", "start_sampling"]

log = logging.getLogger("imgproxy.ops")

SAMPLE_INTERVAL = 10.0  # seconds between samples of the ring
TICK = 2.0  # seconds between fill board and gauge updates
SPAN = 3600.0  # the ring covers this much


@dataclass(frozen=True, slots=True)
class Point:
    """One interval of the ring: its end (epoch s), the chunk hit ratio (None: no reads) and
    bytes per second served to clients and read from upstream."""

    t: float
    hit_ratio: float | None
    served_bps: float
    upstream_bps: float


class History:
    """The last hour of cache-wide counters, one sample per :data:`SAMPLE_INTERVAL`. One per
    process, on its event loop."""

    KEYS = ("hits", "misses", "bytes_served", "bytes_upstream")

    def __init__(self, span: float = SPAN, interval: float = SAMPLE_INTERVAL) -> None:
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(span / interval) + 1)

    def add(self, figures: Mapping[str, Any], now: float | None = None) -> None:
        self._samples.append((time.time() if now is None else now, {k: int(figures.get(k, 0)) for k in self.KEYS}))

    def points(self) -> list[Point]:
        """One point per pair of consecutive samples, oldest first."""
        out = []
        samples = list(self._samples)
        for (t0, a), (t1, b) in zip(samples, samples[1:]):
            dt = max(t1 - t0, 1e-9)
            d = {k: max(0, b[k] - a[k]) for k in self.KEYS}  # a cleared stat must not plot negative
            reads = d["hits"] + d["misses"]
            out.append(Point(t1, d["hits"] / reads if reads else None, d["bytes_served"] / dt,
                             d["bytes_upstream"] / dt))
        return out


def fill_board(cache: ImageCache) -> list[dict[str, Any]]:
    """This process's fills: image, chunk, bytes so far, length, waiters."""
    return [
        {"image_id": f.spec.image_id, "chunk": f.spec.index, "offset": f.spec.span.start, "filled": f.filled,
         "length": f.length, "waiters": f.waiters, "pid": os.getpid()}
        for f in cache.reader.fills_in_flight()
    ]


def read_boards(boards: Path, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every live worker's fills: ``own`` (this process's, current) and the others' boards."""
    fills = list(own)
    me = os.getpid()
    for path in boards.glob("fills-*.json"):
        try:
            pid = int(path.stem.removeprefix("fills-"))
            if pid == me or not Path(f"/proc/{pid}").exists():  # a dead worker's board is stale
                continue
            board = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(board, list):
            fills.extend(board)
    return fills


def _publish_board(boards: Path, board: list[dict[str, Any]], had: bool) -> bool:
    path = boards / f"fills-{os.getpid()}.json"
    if board:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(board))
        os.replace(tmp, path)
        return True
    if had:
        path.unlink(missing_ok=True)
    return False


async def sample_loop(cache: ImageCache, history: History, metrics: "Metrics | None", boards: Path,
                      figures: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Every :data:`TICK`: the fill board and gauge; every :data:`SAMPLE_INTERVAL`: a sample of
    ``figures()`` into ``history`` (and the ``metrics_listen`` snapshot). Runs until cancelled."""
    boards.mkdir(parents=True, exist_ok=True)
    snapshot_dir = multiprocess_dir() if metrics is not None else None
    had_board = False
    next_sample = 0.0
    try:
        while True:
            try:
                board = fill_board(cache)
                if metrics is not None:
                    metrics.fills_in_flight.set(len(board))
                if board or had_board:
                    had_board = await asyncio.to_thread(_publish_board, boards, board, had_board)
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + SAMPLE_INTERVAL
                    current = await figures()
                    history.add(current)
                    if snapshot_dir is not None:
                        await asyncio.to_thread(save_figures, snapshot_dir, current)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status sampling failed; trying again")
            await asyncio.sleep(TICK)
    finally:
        if had_board:
            (boards / f"fills-{os.getpid()}.json").unlink(missing_ok=True)


def start_sampling(service: "Service | EdgeService") -> asyncio.Task[None]:
    """Start :func:`sample_loop` for ``service``; the service cancels it when it closes."""
    from .figures import cache_figures

    async def figures() -> dict[str, Any]:
        return await asyncio.to_thread(cache_figures, service.cache, service.env)

    loop = sample_loop(service.cache, service.history, service.metrics, run_dir(service.settings.data_dir), figures)
    return asyncio.create_task(loop, name="imgproxy-status-sampler")
