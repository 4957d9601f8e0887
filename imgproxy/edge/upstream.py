"""The edge's client of the upstream image API: small requests with bounded retries.

Used for the authorization checks of data requests (an image show per token and image),
for prefetching, and, through :attr:`UpstreamApi.client`, by the proxy that streams every
other request through. Transport errors and 5xx answers of the small requests are retried
``retries`` times with exponential backoff; then :class:`UpstreamUnavailable` (the routes
answer 503 with a JSON body naming the upstream).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Answer", "UpstreamApi", "UpstreamUnavailable"]

log = logging.getLogger("imgproxy.edge")

# The most a small answer (an image show, an error) may hold; more is a broken upstream.
MAX_ANSWER = 1024 * 1024


class UpstreamUnavailable(Exception):
    """The upstream image API could not answer (unreachable, timing out, or 5xx) after retries."""


@dataclass(frozen=True)
class Answer:
    """One upstream answer, whole: status, its end-to-end headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class UpstreamApi:
    """The upstream at ``base_url`` (``http(s)://host:port[/prefix]``). Event-loop only;
    :meth:`aclose` closes the client."""

    def __init__(self, base_url: str, *, timeout: float, retries: int, max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            trust_env=False,  # where the upstream is comes from the settings, not the environment
        )

    async def get(self, path: str, headers: Mapping[str, str]) -> Answer:
        """GET ``path`` (starting with ``/``); any answer below 500 is returned as is.

        Raises :class:`UpstreamUnavailable` after ``retries`` retries of errors and 5xx.
        """
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                async with self.client.stream("GET", self.base_url + path, headers=dict(headers)) as response:
                    body = await _read_bounded(response)
                    if response.status_code < 500:
                        return Answer(response.status_code, tuple(response.headers.multi_items()), body)
                    problem = f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("upstream image API %s: GET %s %s (attempt %d of %d)", self.base_url, path, problem,
                        attempt + 1, self.retries + 1)
        raise UpstreamUnavailable(f"The upstream image API {self.base_url} is unavailable ({problem}); "
                                  f"tried {self.retries + 1} times.")

    async def aclose(self) -> None:
        await self.client.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > MAX_ANSWER:
            raise httpx.DecodingError(f"answer larger than {MAX_ANSWER} bytes")
    return bytes(body)
