"""Authorization of data requests by the upstream: one image show per (token, image), reused briefly.

The edge keeps no image records and decides nothing itself: a data request is served only
if the upstream, asked with the caller's credentials, shows the image. The answer (any
status below 500) is reused for ``ttl`` seconds for the same credentials and image, so a
boot storm costs one show, and a revoked token, or a deleted or deactivated image, stops
being served within ``ttl``. Concurrent checks of one key share one upstream request.

The token of the latest successful check of an image is also what the cache's fills of
that image read the upstream with (:meth:`Authorizer.token_for`): a fill is shared by all
its waiters and outlives the request that started it, so it cannot use "the caller's"
token; any token the upstream just authorized for the image reads the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from .upstream import Answer, UpstreamApi

__all__ = ["Authorizer", "AUTH_HEADERS"]

# The request headers an image show depends on (Keystone tokens; a noauth upstream's project/roles).
AUTH_HEADERS = ("x-auth-token", "x-service-token", "authorization", "x-project-id", "x-tenant-id",
                "x-roles", "x-user-id")

Key = tuple[str, tuple[tuple[str, str], ...]]


class Authorizer:
    """Per-(credentials, image) cache of upstream image shows. Event-loop only.

    At most ``max_entries`` answers are kept (oldest dropped first); nothing of a 5xx or an
    unreachable upstream is kept.
    """

    def __init__(self, upstream: UpstreamApi, ttl: float, *, default_token: str | None = None,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.ttl = ttl
        self.default_token = default_token
        self.max_entries = max_entries
        self._clock = clock
        self._answers: OrderedDict[Key, tuple[float, Answer]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Task[Answer]] = {}
        self._tokens: OrderedDict[str, str] = OrderedDict()  # image id -> a token it was shown to
        self.checks = 0
        self.upstream_checks = 0

    async def check(self, image_id: str, headers: Mapping[str, str]) -> Answer:
        """The upstream's image show for these credentials: 200 (with the record) or the
        refusal to pass back. Raises :class:`UpstreamUnavailable`."""
        self.checks += 1
        creds = tuple((name, headers[name]) for name in AUTH_HEADERS if name in headers)
        key: Key = (image_id, creds)
        kept = self._answers.get(key)
        if kept is not None and kept[0] > self._clock():
            return kept[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(key, dict(creds)))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: a caller that goes away does not cancel the check the others wait for.
        return await asyncio.shield(task)

    async def _ask(self, key: Key, creds: dict[str, str]) -> Answer:
        self.upstream_checks += 1
        image_id = key[0]
        answer = await self.upstream.get(f"/v2/images/{image_id}", creds)
        self._answers[key] = (self._clock() + self.ttl, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
        token = creds.get("x-auth-token")
        if token:
            if answer.status == 200:
                self._tokens[image_id] = token
                self._tokens.move_to_end(image_id)
                while len(self._tokens) > self.max_entries:
                    self._tokens.popitem(last=False)
            elif self._tokens.get(image_id) == token:
                del self._tokens[image_id]
        return answer

    def token_for(self, image_id: str) -> str | None:
        """A token the upstream recently showed ``image_id`` to, else the edge's own."""
        return self._tokens.get(image_id) or self.default_token
