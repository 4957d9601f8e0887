"""Which index streams serve a listing: the caller's scopes, each narrowed by the common filters.

A caller sees the union of a few *scopes*: for a project, its own images, the public ones,
those shared with it (one stream per membership status asked for) and, when asked for, the
community ones; for an admin, every image (the default leaves out others' community images).
Each scope is a conjunction of *term sets* (a set: any of its terms, as ``in:`` lists give)
with the filters the index holds (status, name, owner, tags). A conjunction is served by
walking the streams of as many of its sets as one stream holds (:func:`imgproxy.streams.indexed`:
up to three), the most selective first, and each remaining set is a *check*: one point
lookup per candidate. Visibility and os_hidden are never checks: scopes and partitions hold them.

A plan with no checks and no residual filter (size, times, properties, ...: the engine
reads records for those) is *bounded*: a page reads about ``limit`` index entries and
views, whatever the number of images.

A listing sorted by name (:func:`plan_listing`'s ``by_name``) walks name-order streams
instead: those of the conjunction's owner and visibility together, else of its most
selective scope set, else the one of every image; every other set is a check.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, product
from math import prod

from .context import RequestContext
from .streams import SCOPE_KINDS, indexed, name_stream, stream, term

__all__ = ["Part", "Plan", "plan_listing", "INDEXED_KEYS"]

# Filters (``ListQuery.equals`` keys) the index holds, with their term kinds.
INDEXED_KEYS = {"status": "s", "name": "n", "owner": "o", "disk_format": "d", "container_format": "c"}
# Term kinds by how few images a term usually has: the first sets drive, the rest are checks.
# Formats last: a cloud has a few, each held by many images.
_RANK = {"n": 0, "t": 1, "m": 2, "o": 3, "s": 4, "v": 5, "d": 6, "c": 6}
_SINGLE_VALUED = frozenset("ovsndc")  # an image has one owner, visibility, status, name, format
_MAX_BOUNDED_STREAMS = 16

TermSet = frozenset[bytes]


@dataclass(frozen=True)
class Part:
    """One conjunction: the union of ``streams`` (prefixes), keeping an image only if, for
    each check, the image is in one of its one-term streams (prefixes)."""

    streams: tuple[bytes, ...]
    checks: tuple[tuple[bytes, ...], ...]


@dataclass(frozen=True)
class Plan:
    """A listing's parts (their union, deduplicated, is every candidate) and whether some
    filter needs the records (``residual``)."""

    parts: tuple[Part, ...]
    residual: bool

    @property
    def exact(self) -> bool:
        """Every image of the streams matches: no check, no record to read."""
        return not self.residual and not any(p.checks for p in self.parts)

    @property
    def bounded(self) -> bool:
        """Exact over a few streams: a page in the default order reads about a page."""
        return self.exact and sum(len(p.streams) for p in self.parts) <= _MAX_BOUNDED_STREAMS


def _one(kind: str, value: str) -> TermSet:
    return frozenset({term(kind, value)})


def _scopes(ctx: RequestContext, visibility: str | None, member_status: tuple[str, ...]) -> list[list[TermSet]]:
    """The conjunctions whose union is every image ``ctx`` may list with this visibility filter
    (Glance: community images of others only with ``visibility=community|all``; shared images
    of others only with a membership of a status in ``member_status``)."""
    if ctx.is_admin:
        if visibility == "all":
            return [[]]
        if visibility is not None:
            return [[_one("v", visibility)]]
        return [[_one("v", v)] for v in ("public", "private", "shared")] + [
            [_one("o", ctx.project_id), _one("v", "community")]]
    own = [_one("o", ctx.project_id)]
    public, community = [_one("v", "public")], [_one("v", "community")]
    members = [[_one("m", f"{ctx.project_id}\0{s}")] for s in member_status]
    by_visibility = {
        None: [own, public, *members],
        "all": [own, public, community, *members],
        "private": [own + [_one("v", "private")]],
        "shared": [own + [_one("v", "shared")], *members],
        "public": [public],
        "community": [community],
    }
    return by_visibility[visibility]


def _kind(terms: TermSet) -> str:
    return chr(next(iter(terms))[0])


def _sets(required: tuple[TermSet, ...]) -> list[TermSet] | None:
    """The conjunction's term sets, one per single-valued kind, the most selective first;
    None if nothing can match it."""
    merged: dict[str, TermSet] = {}
    multi: list[TermSet] = []
    for terms in required:
        if not terms:
            return None
        kind = _kind(terms)
        if kind in _SINGLE_VALUED:
            merged[kind] = merged[kind] & terms if kind in merged else terms
            if not merged[kind]:
                return None
        elif terms not in multi:
            multi.append(terms)
    return sorted([*merged.values(), *multi], key=lambda s: (_RANK[_kind(s)], len(s)))


def _checks(sets: list[TermSet], hidden: bool) -> tuple[tuple[bytes, ...], ...]:
    return tuple(tuple(stream((t,), hidden) for t in sorted(s)) for s in sets)


@lru_cache(maxsize=1024)
def _name_part(required: tuple[TermSet, ...], hidden: bool) -> Part | None:
    """The name-order streams and the checks of one conjunction; None if nothing can match it."""
    sets = _sets(required)
    if sets is None:
        return None
    scope = {_kind(s): s for s in sets if _kind(s) in SCOPE_KINDS}
    # An owner and a visibility share a stream; else the most selective scope set drives.
    drive = [scope["o"], scope["v"]] if "o" in scope and "v" in scope else [s for s in sets if s in scope.values()][:1]
    streams = tuple(name_stream(terms, hidden) for terms in product(*(sorted(s) for s in drive)))
    return Part(streams, _checks([s for s in sets if s not in drive], hidden))


@lru_cache(maxsize=1024)  # callers repeat the same few listings: plan each once
def _part(required: tuple[TermSet, ...], hidden: bool) -> Part | None:
    """The streams and checks of one conjunction; None if nothing can match it."""
    sets = _sets(required)
    if sets is None:
        return None
    if not sets:
        return Part((stream((), hidden),), ())
    # The most sets one stream holds (then the most selective kinds) drive; the rest are checks.
    # Alternatives multiply streams: long ``in:`` lists drive alone.
    drive = min(
        (combo for k in (3, 2, 1) for combo in combinations(range(len(sets)), k)
         if indexed([_kind(sets[i]) for i in combo])
         and (k == 1 or prod(len(sets[i]) for i in combo) <= _MAX_BOUNDED_STREAMS)),
        key=lambda combo: (-len(combo), sum(_RANK[_kind(sets[i])] for i in combo)),
    )
    streams = tuple(stream(terms, hidden) for terms in product(*(sorted(sets[i]) for i in drive)))
    return Part(streams, _checks([s for i, s in enumerate(sets) if i not in drive], hidden))


def plan_listing(ctx: RequestContext, *, visibility: str | None, member_status: tuple[str, ...],
                 equals: dict[str, set[object]], tags: list[str], other_filters: bool, by_name: bool = False) -> Plan:
    """The plan of a listing. ``equals`` holds exact filters (sets of allowed values);
    ``other_filters`` says some filter outside ``equals`` and the index is present;
    ``by_name``: the plan walks name-order streams (a listing sorted by name)."""
    hidden = equals.get("os_hidden") == {True}
    filters = [frozenset(term(kind, str(v)) for v in equals[key]) for key, kind in INDEXED_KEYS.items()
               if key in equals]
    filters += [_one("t", tag) for tag in tags]
    residual = other_filters or any(key not in INDEXED_KEYS and key != "os_hidden" for key in equals)
    make = _name_part if by_name else _part
    parts = [p for scope in _scopes(ctx, visibility, member_status) if (p := make((*scope, *filters), hidden))]
    return Plan(tuple(parts), residual)
