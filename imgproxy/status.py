"""The image status lifecycle: Glance's transition table (``glance/domain`` ``valid_state_targets``)."""

from __future__ import annotations

from .errors import Conflict

__all__ = ["STATUSES", "TRANSITIONS", "can_transition", "check_transition"]

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"saving", "active", "deleted"}),
    "saving": frozenset({"active", "killed", "deleted", "queued"}),
    "active": frozenset({"pending_delete", "deleted", "deactivated"}),
    "killed": frozenset({"deleted"}),
    "pending_delete": frozenset({"deleted"}),
    "deactivated": frozenset({"deleted", "active"}),
    "deleted": frozenset(),
    # Not in Glance's table but produced by its import flow; kept so a record in
    # this state can still be deleted.
    "uploading": frozenset({"importing", "queued", "deleted"}),
    "importing": frozenset({"active", "queued", "deleted"}),
}

STATUSES = tuple(TRANSITIONS)


def can_transition(current: str, target: str) -> bool:
    """True if ``current -> target`` is allowed (a no-op ``x -> x`` is not)."""
    return target in TRANSITIONS.get(current, frozenset())


def check_transition(current: str, target: str) -> None:
    """Raise :class:`Conflict` (409) unless ``current -> target`` is allowed."""
    if not can_transition(current, target):
        raise Conflict(f"Image status transition from {current} to {target} is not allowed")
