"""Who is asking: the request context that auth produces and policy reads."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestContext", "ROLES"]

ROLES = ("reader", "member", "admin")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The caller of one request.

    ``project_id`` owns what the caller creates; ``roles`` come from the token.
    A reader may only read; a member may create and change its project's images;
    an admin may do anything to any image.
    """

    project_id: str
    roles: frozenset[str]
    user_id: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        return self.is_admin or "member" in self.roles
