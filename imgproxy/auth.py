"""Who is asking: turning a request's headers into a :class:`RequestContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from .context import RequestContext

__all__ = ["Authenticator", "ImmediateAuthenticator", "NoAuth", "NO_CHALLENGE"]

# What a 401 says when no identity service issues the tokens (tokens file, noauth):
# python-glanceclient and openstacksdk read nothing from it.
NO_CHALLENGE = "Keystone uri=''"

_NOAUTH_ROLES = frozenset({"admin", "member", "reader"})
# Contexts NoAuth keeps (by project and roles header) before it starts again.
_NOAUTH_CONTEXTS = 1024


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


@runtime_checkable
class ImmediateAuthenticator(Authenticator, Protocol):
    """An authenticator that can often tell the caller at once, with no I/O."""

    def authenticate_now(self, headers: Mapping[str, str]) -> RequestContext | None:
        """The caller's context when it can be told without waiting (a token already
        known to be valid), else ``None``: then :meth:`authenticate` decides, and may
        answer 401. Raises as :meth:`authenticate` does; never blocks."""
        ...


class NoAuth:
    """Development mode: every caller is an admin of the project it names.

    The project comes from ``X-Project-Id`` (or ``X-Tenant-Id``), so tests and tools can
    still act as different projects; without one the caller has no project, and what it
    creates has no owner (``owner`` null, as Glance's noauth mode answers).
    """

    challenge = NO_CHALLENGE

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str | None], RequestContext] = {}  # the same caller, one context

    def authenticate_now(self, headers: Mapping[str, str]) -> RequestContext:
        project = headers.get("x-project-id") or headers.get("x-tenant-id") or ""
        roles = headers.get("x-roles")
        context = self._contexts.get((project, roles))
        if context is None:
            if len(self._contexts) >= _NOAUTH_CONTEXTS:
                self._contexts.clear()
            role_set = frozenset(r.strip() for r in roles.split(",") if r.strip()) if roles else _NOAUTH_ROLES
            context = self._contexts[(project, roles)] = RequestContext(project_id=project, roles=role_set)
        return context

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        return self.authenticate_now(headers)

    async def aclose(self) -> None:
        return None
