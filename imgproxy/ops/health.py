"""``GET /healthcheck`` (as Glance answers it) and ``GET /healthcheck/ready``.

``/healthcheck`` is oslo.middleware's healthcheck with its ``disable_by_file`` backend, as
Glance deploys it: ``200 OK`` (``HEAD``: 204), or, while the file ``healthcheck_disable_file``
names exists, ``503 DISABLED BY FILE``: an operator takes a node out of its load balancer by
touching a file. The body follows ``Accept`` as oslo's does: text (default), JSON
(``{"detailed": false, "reasons": [...]}``) or HTML. It says the process answers; nothing more.

``/healthcheck/ready`` (an imgproxy extension) says whether requests can be served now: 200
``{"ready": true, "checks": {...}}``, or 503 with ``"ready": false`` and, per failed check,
what is wrong. Checks: the registry (an LMDB read), the stores (the default store's
directory, or a store that can tell, such as S3 or Swift, asked now), in edge mode the
upstream image API, and the disable file. Each check is bounded by a few seconds.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["healthcheck", "readiness"]

CHECK_TIMEOUT = 5.0
_OFFERS = ("text/plain", "text/html", "application/json")  # oslo's order: the first wins ties


def _quality(accept: str, offer: str) -> float:
    """The q the ``Accept`` header gives ``offer`` (its most specific matching range)."""
    kind = offer.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        specificity = 2 if media == offer else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def preferred(accept: str | None) -> str:
    if not accept:
        return _OFFERS[0]
    scored = [(_quality(accept, offer), -i, offer) for i, offer in enumerate(_OFFERS)]
    q, _, offer = max(scored)
    return offer if q > 0 else _OFFERS[0]  # nothing acceptable: text, as oslo does


def disabled_by_file(settings: Any) -> bool:
    path: str = settings.healthcheck_disable_file
    return bool(path) and os.path.exists(path)


async def healthcheck(request: Request) -> Response:
    service = request.app.state.service
    healthy = not disabled_by_file(service.settings)
    reason = "OK" if healthy else "DISABLED BY FILE"
    if request.method == "HEAD":
        return Response(status_code=204 if healthy else 503, media_type="text/plain")
    status = 200 if healthy else 503
    kind = preferred(request.headers.get("accept"))
    if kind == "application/json":
        body = json.dumps({"detailed": False, "reasons": [reason]}, indent=4, sort_keys=True)
    elif kind == "text/html":
        body = (f"<HTML>\n<HEAD><TITLE>Healthcheck Status</TITLE></HEAD>\n<BODY>\n<H2>Result of 1 checks:</H2>\n"
                f"<TABLE bgcolor=\"#ffffff\" border=\"1\">\n<TBODY>\n<TR>\n<TH>\nReason\n</TH>\n</TR>\n<TR>\n"
                f"    <TD>{html.escape(reason)}</TD>\n</TR>\n</TBODY>\n</TABLE>\n<HR></HR>\n</BODY>\n</HTML>")
    else:
        body = reason
    return Response(body, status_code=status, media_type=kind)


async def _bounded(check: Callable[[], Awaitable[str | None]]) -> str | None:
    """Run one check: None when fine, else what is wrong."""
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # a check reports its failure; it never fails the probe itself
        return f"{type(exc).__name__}: {exc}"


def _read_lmdb(env: Any) -> None:
    """A read transaction and a stat of the environment: what every request needs first."""
    with env.begin() as txn:
        txn.get(b"readiness-probe")
    env.stat()


def _checks(service: Any) -> dict[str, Callable[[], Awaitable[str | None]]]:
    from ..edge.service import EdgeService

    async def registry() -> str | None:
        await asyncio.to_thread(_read_lmdb, service.env)
        return None

    async def stores() -> str | None:
        problems = await service.backends.check(CHECK_TIMEOUT)
        root = getattr(service.backends.default, "root", None)
        if root is not None and not os.access(root, os.W_OK | os.X_OK):
            problems.append((service.backends.store_url, f"directory {root} is missing or not writable"))
        return "; ".join(f"store {name}: {why}" for name, why in problems) or None

    async def upstream() -> str | None:
        answer = await service.upstream.get("/versions", {})
        return None if answer.status < 400 else f"GET /versions answered {answer.status}"

    checks: dict[str, Callable[[], Awaitable[str | None]]] = {"registry": registry}
    if isinstance(service, EdgeService):
        checks["upstream"] = upstream
    else:
        checks["store"] = stores
    return checks


async def readiness(request: Request) -> Response:
    service = request.app.state.service
    checks = _checks(service)
    results = await asyncio.gather(*(_bounded(check) for check in checks.values()))
    report: dict[str, str] = {name: problem or "ok" for name, problem in zip(checks, results)}
    if disabled_by_file(service.settings):
        report["healthcheck"] = f"disabled by file {service.settings.healthcheck_disable_file}"
    ready = all(value == "ok" for value in report.values())
    return JSONResponse({"ready": ready, "checks": report}, status_code=200 if ready else 503,
                        headers={"Cache-Control": "no-store"})
