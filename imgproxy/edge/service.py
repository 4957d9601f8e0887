"""The edge's resources: the cache, the upstream client, authorization, verification, loops.

Opened and closed by the edge app's lifespan. What an edge keeps is a cache: chunk files,
manifests (size, digests, chunk addresses learned by fills), verify marks and the
prefetch queue, all in ``data_dir``. Image records stay the upstream's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb

from backends import ByteRange, ReadBackend
from backends.http import HttpOptions
from backends.image_api import ImageApiBackend, data_location
from cache import CacheError, ImageCache, Manifest, PrefetchResult

from ..auth import Authenticator
from ..db import open_env
from ..loops import start_loops
from ..memory import IdleTrimmer
from ..ops.history import History, start_sampling
from ..ops.metrics import Metrics, open_metrics
from ..ops.store_meter import MeteredStore
from ..service import open_authenticator, open_cache
from ..settings import Settings
from .authz import Authorizer
from .proxy import UpstreamProxy
from .upstream import Answer, UpstreamApi
from .verify import Verifier

__all__ = ["EdgeService", "open_edge_service", "cacheable"]

log = logging.getLogger("imgproxy.edge")


def cacheable(record: Mapping[str, Any]) -> bool:
    """Whether the edge serves this image's data from its cache: active, with a size and a
    digest to verify against. Anything else (queued, deactivated, no digests) is proxied."""
    return (record.get("status") == "active" and isinstance(record.get("size"), int)
            and bool((record.get("os_hash_algo") == "sha512" and record.get("os_hash_value"))
                     or record.get("checksum")))


@dataclass
class EdgeService:
    """Everything the edge's handlers use. One per worker process."""

    settings: Settings
    env: lmdb.Environment
    cache: ImageCache
    auth: Authenticator  # the edge's own tokens, for its /v2/cache API
    upstream: UpstreamApi
    authorizer: Authorizer
    backend: ImageApiBackend
    verifier: Verifier
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    trimmer: IdleTrimmer = field(default_factory=IdleTrimmer)
    metrics: Metrics | None = None  # None: metrics = false
    history: History = field(default_factory=History)  # the status page's last hour
    proxy: UpstreamProxy = field(init=False)  # every request the edge does not answer itself

    def __post_init__(self) -> None:
        self.proxy = UpstreamProxy(self.upstream)
        # What fills read: the backend, counted in the metrics as the store "upstream_api".
        self.source: ReadBackend = self.backend
        if self.metrics is not None:
            self.source = MeteredStore(self.backend, "upstream_api", self.metrics)

    def location(self, image_id: str) -> str:
        return data_location(self.settings.upstream_api, image_id)

    def own_headers(self) -> dict[str, str]:
        """The edge's own credentials for the upstream (work no caller asked for)."""
        token = self.settings.upstream_token
        return {"X-Auth-Token": token} if token else {}

    async def show(self, image_id: str) -> Answer:
        """The upstream's image show with the edge's own credentials (not cached)."""
        return await self.upstream.get(f"/v2/images/{image_id}", self.own_headers())

    async def manifest_for(self, image_id: str, record: Mapping[str, Any]) -> Manifest:
        """The cached manifest of a :func:`cacheable` image, or a new one with unknown chunk
        addresses; one that disagrees with the record (size, digests) is replaced."""
        size = int(record["size"])
        sha = record.get("os_hash_value") if record.get("os_hash_algo") == "sha512" else None
        md5 = record.get("checksum")
        manifest = self.cache.get_manifest(image_id)
        if manifest is not None and (manifest.size, manifest.os_hash_value, manifest.checksum) == (size, sha, md5):
            return manifest
        if manifest is not None:
            log.warning("image %s changed upstream (size or digests); its cached data is dropped", image_id)
            await self.cache.forget_image_async(image_id)
        manifest = Manifest.unknown(size, self.settings.chunk_size, checksum=md5, os_hash_value=sha)
        await asyncio.to_thread(self.cache.put_manifest, image_id, manifest)
        return manifest

    async def fill(self, image_id: str, manifest: Manifest) -> None:
        """Bring the whole image into the cache, verifying it if it was not yet. Raises CacheError."""
        location = self.location(image_id)
        if not self.verifier.verified(image_id, manifest):
            await self.verifier.start(image_id, manifest, self.backend, location)
            return
        async for _ in self.cache.read(image_id, manifest, ByteRange(0, manifest.size), self.source, location,
                                       count_hit=False):
            pass

    async def prefetch_queued(self) -> PrefetchResult:
        """One run of the prefetcher: fill each queued image the upstream still shows the edge."""
        sem = asyncio.Semaphore(self.settings.prefetch_concurrency)
        counts = {"cached": 0, "failed": 0, "dropped": 0}

        async def one(image_id: str) -> None:
            async with sem:
                try:
                    answer = await self.show(image_id)
                    if answer.status in (404, 410) or (answer.status == 200 and not cacheable(answer.json())):
                        await self.cache.queue.remove_async(image_id)
                        counts["dropped"] += 1
                        return
                    if answer.status != 200:
                        raise CacheError(f"the upstream answered {answer.status} to the edge's upstream_token")
                    await self.fill(image_id, await self.manifest_for(image_id, answer.json()))
                except Exception as exc:
                    log.error("prefetch of image %s failed (stays queued): %s", image_id, exc)
                    counts["failed"] += 1
                    return
                await self.cache.queue.remove_async(image_id)
                counts["cached"] += 1

        queued = await asyncio.to_thread(self.cache.queue.items)
        await asyncio.gather(*(one(image_id) for image_id in queued))
        return PrefetchResult(**counts)

    def kick_prefetcher(self) -> None:
        """Run the prefetcher now (a service task: shutdown cancels it)."""

        async def run() -> None:
            try:
                log.info("prefetch (on request): %s", await self.prefetch_queued())
            except Exception:
                log.exception("prefetch (on request) failed; the loop retries")

        task = asyncio.get_running_loop().create_task(run(), name="edge-prefetch-now")
        self.tasks.append(task)
        task.add_done_callback(lambda t: self.tasks.remove(t) if t in self.tasks else None)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.verifier.aclose()
        await self.cache.aclose()
        await self.backend.aclose()
        await self.upstream.aclose()
        await self.auth.aclose()
        self.env.close()
        if self.metrics is not None:
            self.metrics.close()


async def open_edge_service(settings: Settings, *, loops: bool = True) -> EdgeService:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    cache = open_cache(settings, env)
    upstream = UpstreamApi(settings.upstream_api, timeout=settings.upstream_timeout,
                           retries=settings.upstream_retries)
    authorizer = Authorizer(upstream, settings.edge_auth_ttl, default_token=settings.upstream_token or None)
    backend = ImageApiBackend(authorizer.token_for, HttpOptions(timeout=max(settings.upstream_timeout, 0.1)),
                              spool_dir=settings.data_dir / "edge-spool", retries=settings.upstream_retries)
    service = EdgeService(settings=settings, env=env, cache=cache, auth=open_authenticator(settings),
                          upstream=upstream, authorizer=authorizer, backend=backend,
                          verifier=Verifier(cache, env), metrics=open_metrics(settings))
    if loops:
        log.info("edge mode: caching image data of %s; cache recovery: %s", settings.upstream_api,
                 await cache.clean())
        service.tasks = start_loops({
            "prune": (settings.prune_interval, cache.prune),
            "clean": (settings.clean_interval, cache.clean),
            "audit": (settings.clean_interval, cache.audit),
            "prefetch": (settings.prefetch_interval, service.prefetch_queued),
        })
        service.tasks.append(start_sampling(service))
    return service
