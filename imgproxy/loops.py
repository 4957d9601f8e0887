"""Background loops the service runs: prune, clean/audit, prefetch, access-time flush.

Each loop owns nothing but its schedule; the work lives in ``cache``. A loop that
fails logs and tries again at its next interval; it never takes the service down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["run_every", "start_loops"]

log = logging.getLogger("imgproxy.loops")


async def run_every(name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s loop failed; retrying in %.0fs", name, interval)


def start_loops(steps: dict[str, tuple[float, Callable[[], Awaitable[object]]]]) -> list[asyncio.Task[None]]:
    """Start one task per named step whose interval is positive."""
    return [
        asyncio.create_task(run_every(name, interval, step), name=f"imgproxy-{name}")
        for name, (interval, step) in steps.items()
        if interval > 0
    ]
