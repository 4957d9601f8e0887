"""Who is asking: turning a request's headers into a :class:`RequestContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .context import RequestContext

__all__ = ["Authenticator", "NoAuth"]


class Authenticator(Protocol):
    def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        """Return the caller's context, or ``None`` when the token is missing or unknown.

        Called on the event loop for every request: must not block for long.
        """
        ...

    def close(self) -> None: ...


class NoAuth:
    """Development mode: every caller is an admin of the project it names.

    The project comes from ``X-Project-Id`` (or ``X-Tenant-Id``), defaulting to
    ``"noauth"``, so tests and tools can still act as different projects.
    """

    def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        project = headers.get("x-project-id") or headers.get("x-tenant-id") or "noauth"
        roles = headers.get("x-roles")
        role_set = frozenset(r.strip() for r in roles.split(",") if r.strip()) if roles else frozenset({"admin", "member", "reader"})
        return RequestContext(project_id=project, roles=role_set)

    def close(self) -> None:
        return None
