"""The registry's index streams: which index keys an image has, and the prefix of a stream.

An index key is ``<partition><n><term>*<order>``:

- ``partition`` is ``b"h"`` for an image with ``os_hidden`` set and ``b"-"`` otherwise, so a
  listing (which shows hidden images only when asked for, and then only them) never steps
  over the other kind;
- ``n`` is the number of terms (one byte: 0 to 3), so no stream's prefix is a prefix of a
  longer stream's keys;
- a term is a kind letter and the 16-byte BLAKE2b of a value: ``o`` owner, ``v``
  visibility, ``s`` status, ``n`` name, ``t`` a tag, ``m`` a membership
  (``<member>\\0<member status>``, only while the image is ``shared``, so a member's stream
  holds exactly the images the membership makes visible), ``d`` disk format, ``c``
  container format (these two have one-term streams only: listings check them, see
  :func:`pairable`). A 128-bit cryptographic hash
  makes two values with one term out of reach, so a stream holds exactly the images with
  its terms and a listing trusts it without reading records;
- ``order`` is ``<created_us 8-byte BE><id>``: walking a stream backwards yields the default
  list order (created_at desc, id desc) and a marker is a seek.

The streams of an image: the empty one (every image of its partition), one per term, one
per *pair* of a scope term (owner, visibility, membership: the parts a caller's listing is
the union of) with a term of another kind (status, name, tag, owner, visibility), and one
per owner-visibility-(status|name|tag) *triple*; so "my images with this tag", "public
images named X" or "my private images with this tag" is one stream (:func:`indexed`).
With T tags and M memberships an image has ``12 + 4T + M(4 + T)`` keys, plus one per format
it has.

A listing sorted by name walks a *name-order* stream instead: ``N<stream prefix><name
key><order>`` (:func:`name_stream`, :func:`name_key`), one for every image of its partition,
one per scope term (owner, visibility, membership) and one per owner-visibility pair; with
those, two to four more keys an image, and one more a membership. Filters on other terms are point lookups of the image's
order in their created-order streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Any

__all__ = [
    "ORDER_TS", "term", "stream", "stream_prefix", "order_of", "pairable", "indexed", "record_terms",
    "record_keys", "member_keys", "partition", "name_stream", "name_key", "name_end", "split_name",
]

ORDER_TS = 8  # bytes of the big-endian created_us at the start of every order
SCOPE_KINDS = frozenset("omv")
CHECK_KINDS = frozenset("dc")  # terms with one-term streams only
NAME_ORDER = b"N"


@lru_cache(maxsize=4096)  # listings ask for the same few terms (a caller's project, "public") again and again
def term(kind: str, value: str) -> bytes:
    """One term: the kind letter and the value's 16-byte BLAKE2b."""
    return kind.encode() + blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def partition(hidden: bool) -> bytes:
    return b"h" if hidden else b"-"


def stream(terms: Sequence[bytes], hidden: bool = False) -> bytes:
    """The key prefix of the stream of images having every one of ``terms`` (0-2)."""
    return partition(hidden) + bytes([len(terms)]) + b"".join(sorted(terms))


def stream_prefix(kind: str, value: str | None = None, *, hidden: bool = False) -> bytes:
    """The prefix of a one-term stream: ``stream_prefix("o", owner)``,
    ``stream_prefix("m", f"{member}\\0{status}")``; ``stream_prefix("c")`` is every image."""
    if kind == "c":
        return stream((), hidden)
    assert value is not None
    return stream((term(kind, value),), hidden)


def pairable(a: str, b: str) -> bool:
    """Whether images have a two-term stream of kinds ``a`` and ``b``."""
    if a in CHECK_KINDS or b in CHECK_KINDS:
        return False
    return a != b and (a in SCOPE_KINDS or b in SCOPE_KINDS) and {a, b} != {"m", "v"}


def indexed(kinds: Sequence[str]) -> bool:
    """Whether images have streams of terms of these kinds (one term of each)."""
    if len(kinds) <= 1:
        return True
    if len(kinds) == 2:
        return pairable(kinds[0], kinds[1])
    rest = set(kinds) - {"o", "v"}
    return len(kinds) == 3 and len(set(kinds)) == 3 and len(rest) == 1 and rest <= {"s", "n", "t"}


def order_of(record: Mapping[str, Any]) -> bytes:
    return int(record["_created_us"]).to_bytes(ORDER_TS, "big") + str(record["id"]).encode()


def record_terms(record: Mapping[str, Any]) -> list[bytes]:
    """The terms of a record (memberships aside)."""
    terms = [term("v", str(record.get("visibility"))), term("s", str(record.get("status")))]
    if record.get("owner") is not None:
        terms.append(term("o", str(record["owner"])))
    if record.get("name") is not None:
        terms.append(term("n", str(record["name"])))
    terms += {term("t", str(tag)) for tag in record.get("tags") or ()}
    terms += [term(kind, str(record[key])) for key, kind in (("disk_format", "d"), ("container_format", "c"))
              if record.get(key) is not None]
    return terms


def name_stream(terms: Sequence[bytes], hidden: bool = False) -> bytes:
    """The key prefix of the name-order stream of images having every one of ``terms``: none,
    one scope term, or an owner and a visibility."""
    return NAME_ORDER + stream(terms, hidden)


def name_key(name: object) -> bytes:
    """A name as it sorts (Glance's: null first, then by code point), self-delimiting:
    ``\\0`` for null, else ``\\1``, the UTF-8 with each NUL as ``\\0\\xff``, and ``\\0\\0``
    (UTF-8 has no 0xff byte, so the first ``\\0\\0`` ends the name; a shorter name sorts
    first)."""
    if name is None:
        return b"\0"
    return b"\1" + str(name).encode("utf-8", "surrogatepass").replace(b"\0", b"\0\xff") + b"\0\0"


def name_end(suffix: bytes) -> int:
    """Where the name key ends in a name-order stream's key after its prefix."""
    return 1 if suffix[0] == 0 else suffix.index(b"\0\0") + 2


def split_name(suffix: bytes) -> tuple[bytes, bytes]:
    """``(name key, order)`` of a name-order stream's key after its prefix."""
    end = name_end(suffix)
    return suffix[:end], suffix[end:]


def _name_keys(record: Mapping[str, Any], groups: Iterable[tuple[bytes, ...]], hidden: bool, order: bytes) -> set[bytes]:
    suffix = name_key(record.get("name")) + order
    return {name_stream(group, hidden) + suffix for group in groups}


def _keys(terms: Iterable[bytes], groups: Iterable[tuple[bytes, ...]], hidden: bool, order: bytes) -> set[bytes]:
    keys = {stream((t,), hidden) + order for t in terms}
    keys.update(stream(group, hidden) + order for group in groups)
    return keys


def record_keys(record: Mapping[str, Any]) -> set[bytes]:
    """Every index key of a record, except those of its memberships (:func:`member_keys`)."""
    terms, hidden, order = record_terms(record), bool(record.get("os_hidden")), order_of(record)
    pairs = [(a, b) for i, a in enumerate(terms) for b in terms[i + 1:] if pairable(chr(a[0]), chr(b[0]))]
    owner = [t for t in terms if t[:1] == b"o"]
    vis = terms[0]  # record_terms puts the visibility first
    triples = [(vis, owner[0], t) for t in terms if owner and t[:1] in (b"s", b"n", b"t")]
    scope = [(), *((t,) for t in terms if chr(t[0]) in SCOPE_KINDS), *((vis, o) for o in owner)]
    names = _name_keys(record, scope, hidden, order)
    return _keys(terms, [*pairs, *triples], hidden, order) | {stream((), hidden) + order} | names


def member_keys(record: Mapping[str, Any], member: Mapping[str, Any]) -> set[bytes]:
    """The index keys one membership adds to a record: none unless the image is shared."""
    if record.get("visibility") != "shared":
        return set()
    mterm = term("m", f"{member['member_id']}\0{member['status']}")
    others = [t for t in record_terms(record) if pairable("m", chr(t[0]))]
    hidden, order = bool(record.get("os_hidden")), order_of(record)
    return _keys([mterm], [(mterm, t) for t in others], hidden, order) | _name_keys(record, [(mterm,)], hidden, order)
