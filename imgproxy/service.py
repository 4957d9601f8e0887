"""The running service's resources, opened and closed by the app's lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lmdb

from backends import Backends

from .auth import Authenticator, NoAuth
from .db import open_env
from .registry import Registry
from .settings import Settings

__all__ = ["Service", "open_service"]

log = logging.getLogger("imgproxy")


@dataclass
class Service:
    """Everything a request handler may use. One per worker process."""

    settings: Settings
    env: lmdb.Environment
    registry: Registry
    backends: Backends
    auth: Authenticator

    async def aclose(self) -> None:
        await self.backends.aclose()
        self.auth.close()
        self.env.close()


def open_authenticator(settings: Settings) -> Authenticator:
    if not settings.auth_enabled:
        return NoAuth()
    from .tokens import TokensAuth

    return TokensAuth(settings.data_dir / "tokens.json")


async def open_service(settings: Settings) -> Service:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    registry = Registry(env)
    backends = Backends(settings.store_url, settings.extra)
    auth = open_authenticator(settings)
    return Service(settings=settings, env=env, registry=registry, backends=backends, auth=auth)
