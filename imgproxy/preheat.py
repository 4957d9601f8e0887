"""``imgproxy cache prefetch --url URL --token T IMAGE... [--wait]``: preheat running services.

What an operator runs before rolling an image out to a rack (Nova's aggregate image
pre-cache does the same for Glance-cached compute nodes): every image is queued on every
service (``PUT /v2/cache/{id}``, Glance's cache API, so a Glance works too); with ``--wait``,
one progress bar per image and service follows the fill until each is cached, then a
summary table. Progress comes from ``GET /v2/cache/{id}`` (cached bytes of one image, an
imgproxy extension); a service without it (Glance) is followed through ``GET /v2/cache``,
which says only queued or cached.

A target fails when the service refuses the queueing (the service's message is shown),
cannot be reached, lets the image leave its queue uncached, or the timeout passes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

__all__ = ["Target", "preheat", "render_bar", "summary_table"]

BAR_WIDTH = 24
# An image out of the queue but not (yet) whole: the last chunks of a fill are stored just after
# it leaves the queue. Only when no byte arrives for this long has it really left uncached
# (deleted, deactivated, or evicted again at once).
SETTLE_SECONDS = 10.0


@dataclass
class Target:
    """One image on one service, and how far its fill is."""

    url: str
    image_id: str
    state: str = "queueing"  # queueing, queued, filling, cached, failed
    cached: int = 0
    size: int | None = None
    detail: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    changed: float = field(default_factory=time.monotonic)  # when ``cached`` last grew

    @property
    def done(self) -> bool:
        return self.state in ("cached", "failed")

    @property
    def service(self) -> str:
        return urlsplit(self.url).netloc or self.url

    def saw(self, cached: int, size: int | None, queued: bool) -> None:
        """One observation of an unfinished fill."""
        if cached != self.cached:
            self.changed = time.monotonic()
        self.cached, self.size = cached, size if size is not None else self.size
        if queued or time.monotonic() - self.changed < SETTLE_SECONDS:
            self.state = "filling" if cached else "queued"
        else:
            self.finish("failed", "left the queue without being cached (see the service's log)")

    def finish(self, state: str, detail: str = "") -> None:
        self.state, self.detail, self.finished = state, detail, time.monotonic()
        if state == "cached" and self.size is not None:
            self.cached = self.size


def _message(response: httpx.Response) -> str:
    """The service's own words for a refusal (Glance's and imgproxy's JSON errors), else the status."""
    try:
        error = response.json().get("error") or {}
        text = str(error.get("message") or "").strip()
    except (ValueError, AttributeError):
        text = ""
    return f"{response.status_code}: {text}" if text else f"HTTP {response.status_code}"


async def _queue(client: httpx.AsyncClient, target: Target) -> None:
    try:
        response = await client.put(f"{target.url}/v2/cache/{target.image_id}")
    except httpx.HTTPError as exc:
        target.finish("failed", f"cannot reach the service ({type(exc).__name__})")
        return
    if response.status_code == 202:
        target.state = "queued"
    else:
        target.finish("failed", _message(response))


async def _poll_one(client: httpx.AsyncClient, target: Target, listing: dict[str, Any]) -> None:
    """Bring ``target`` up to date; ``listing`` holds each service's ``GET /v2/cache`` of this round."""
    try:
        response = await client.get(f"{target.url}/v2/cache/{target.image_id}")
        if response.status_code == 200:
            row = response.json()
            target.saw(int(row.get("cached_bytes") or 0), row.get("size"), bool(row.get("queued")))
            if row.get("complete"):
                target.finish("cached")
            return
        if response.status_code not in (404, 405):
            target.detail = _message(response)  # passing trouble (a restart, a 503): poll again
            return
        # No per-image progress (a Glance): the cache listing says queued or cached.
        if target.url not in listing:
            listing[target.url] = (await client.get(f"{target.url}/v2/cache")).json()
        state = listing[target.url]
        if any(row.get("image_id") == target.image_id for row in state.get("cached_images", ())):
            target.finish("cached")
        else:
            target.saw(0, target.size, target.image_id in state.get("queued_images", ()))
    except (httpx.HTTPError, ValueError) as exc:
        target.detail = f"cannot read its progress ({type(exc).__name__}); trying again"


def render_bar(target: Target, width: int = BAR_WIDTH) -> str:
    """One line: image, service, bar, percent, bytes, state."""
    if target.state == "cached":
        fraction = 1.0
    elif target.size:
        fraction = min(1.0, target.cached / target.size)
    else:
        fraction = 0.0
    filled = int(round(fraction * width))
    size = _bytes(target.size) if target.size is not None else "?"
    state = target.state + (f": {target.detail}" if target.detail and target.state == "failed" else "")
    return (f"{target.image_id}  {target.service:<21}  [{'#' * filled}{'.' * (width - filled)}] "
            f"{fraction * 100:5.1f}%  {_bytes(target.cached):>9} / {size:<9}  {state}")


def summary_table(targets: Sequence[Target]) -> str:
    """The closing table: one row per image and service."""
    rows = [("IMAGE", "SERVICE", "SIZE", "STATE", "SECONDS", "DETAIL")]
    for t in targets:
        seconds = (t.finished or time.monotonic()) - t.started
        rows.append((t.image_id, t.service, _bytes(t.size) if t.size is not None else "?", t.state,
                     f"{seconds:.1f}", t.detail if t.state == "failed" else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in rows).rstrip() + "\n"


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _Screen:
    """Progress on a terminal (bars redrawn in place) or in a log (a line per change)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._said: dict[tuple[str, str], tuple[str, int]] = {}

    def show(self, targets: Sequence[Target]) -> None:
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")
            for t in targets:
                self.out.write(render_bar(t) + "\x1b[K\n")
            self._drawn = len(targets)
        else:
            for t in targets:
                step = int(t.cached * 4 / t.size) if t.size else 0  # a line per quarter, not per poll
                key = (t.url, t.image_id)
                if self._said.get(key) != (t.state, step):
                    self._said[key] = (t.state, step)
                    self.out.write(render_bar(t) + "\n")
        self.out.flush()


async def preheat(urls: Sequence[str], images: Sequence[str], token: str, *, wait: bool, timeout: float = 3600.0,
                  interval: float = 1.0, out: IO[str] = sys.stdout) -> list[Target]:
    """Queue every image on every service; with ``wait``, follow them until each is cached or failed.

    Returns the targets (their ``state`` says how each ended); writes progress and, at the
    end, :func:`summary_table` to ``out``.
    """
    targets = [Target(url.rstrip("/"), image) for url in urls for image in images]
    screen = _Screen(out)
    async with httpx.AsyncClient(headers={"X-Auth-Token": token}, timeout=30) as client:
        await asyncio.gather(*(_queue(client, t) for t in targets))
        deadline = time.monotonic() + timeout
        while wait:
            listing: dict[str, Any] = {}
            await asyncio.gather(*(_poll_one(client, t, listing) for t in targets if not t.done))
            screen.show(targets)
            if all(t.done for t in targets):
                break
            if time.monotonic() >= deadline:
                for t in targets:
                    if not t.done:
                        t.finish("failed", f"not cached within {timeout:g} s")
                break
            await asyncio.sleep(interval)
    if not wait:
        for t in targets:
            if t.state == "queued":
                t.finished = time.monotonic()
    out.write("\n" + summary_table(targets))
    out.flush()
    return targets
