"""Who is asking: the request context that auth produces and policy reads."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestContext", "ROLES"]

# Glance's default roles; ``service`` is what its ``service_api`` rule asks of
# service-to-service calls (Nova, Cinder): a token of a user with that role.
ROLES = ("reader", "member", "admin", "service")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The caller of one request.

    ``project_id`` owns what the caller creates; ``roles`` come from the token.
    A reader may only read; a member may create and change its project's images;
    an admin may do anything to any image; ``service`` opens the calls Glance keeps
    for other services (its ``service_api`` rule: ``role:service or role:admin``).
    ``service_roles`` are those of the service token sent along (``X-Service-Token``):
    as in Glance (oslo.policy's ``role:`` checks read the user's roles only), they open
    no policy, only what Glance opens for them (see :func:`imgproxy.policy.check_add_location`).
    """

    project_id: str
    roles: frozenset[str]
    user_id: str = ""
    service_roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_service(self) -> bool:
        """Glance's ``service_api``: a service, or an admin."""
        return "service" in self.roles or self.is_admin

    @property
    def can_write(self) -> bool:
        return self.is_admin or "member" in self.roles
