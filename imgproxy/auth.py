"""Who is asking: turning a request's headers into a :class:`RequestContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .context import RequestContext

__all__ = ["Authenticator", "NoAuth", "NO_CHALLENGE"]

# What a 401 says when no identity service issues the tokens (tokens file, noauth):
# python-glanceclient and openstacksdk read nothing from it.
NO_CHALLENGE = "Keystone uri=''"


class Authenticator(Protocol):
    """One per worker process, opened with the service and closed by :meth:`aclose`."""

    #: The ``WWW-Authenticate`` value of a 401: where a client gets a token.
    challenge: str

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        """Return the caller's context, or ``None`` when the token is missing, unknown,
        expired or revoked (the caller answers 401 with :attr:`challenge`).

        Called on the event loop for every request: it may wait on I/O, never block.
        Raises :class:`imgproxy.errors.ApiError` for an answer other than 401 (503 when
        the identity service cannot be asked; 403 for a token the service cannot use).
        """
        ...

    async def aclose(self) -> None: ...


class NoAuth:
    """Development mode: every caller is an admin of the project it names.

    The project comes from ``X-Project-Id`` (or ``X-Tenant-Id``), so tests and tools can
    still act as different projects; without one the caller has no project, and what it
    creates has no owner (``owner`` null, as Glance's noauth mode answers).
    """

    challenge = NO_CHALLENGE

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        project = headers.get("x-project-id") or headers.get("x-tenant-id") or ""
        roles = headers.get("x-roles")
        role_set = frozenset(r.strip() for r in roles.split(",") if r.strip()) if roles else frozenset({"admin", "member", "reader"})
        return RequestContext(project_id=project, roles=role_set)

    async def aclose(self) -> None:
        return None
