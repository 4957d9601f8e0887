"""Manifests: an image as its size, whole-image digests and ordered chunk addresses.

A chunk address is the 16-byte xxh3-128 digest of the chunk's bytes. An address may be
``None`` (unknown until the chunk is first filled: images registered by URL). A chunk
index listed in ``collisions`` shares its address with different bytes already cached;
it is never cached and always read from the store.

Stored in the LMDB named database ``manifests`` (image id -> :meth:`Manifest.encode`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace

import lmdb

from backends.base import ByteRange

__all__ = ["Manifest", "ManifestTable", "ADDRESS_SIZE"]

ADDRESS_SIZE = 16
_HEADER = struct.Struct("<I")
_ABSENT = b"\0" * (ADDRESS_SIZE + 1)


@dataclass(frozen=True)
class Manifest:
    """An image's layout. Immutable; ``with_*`` return updated copies."""

    size: int
    chunk_size: int
    chunks: tuple[bytes | None, ...]
    checksum: str | None = None  # hex md5 (Glance ``checksum``)
    os_hash_value: str | None = None  # hex sha512 (Glance ``os_hash_value``)
    collisions: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0:
            raise ValueError("bad manifest size or chunk size")
        if len(self.chunks) != self.chunk_count(self.size, self.chunk_size):
            raise ValueError(f"manifest of {self.size} bytes needs {self.chunk_count(self.size, self.chunk_size)} chunks")

    @staticmethod
    def chunk_count(size: int, chunk_size: int) -> int:
        return -(-size // chunk_size)

    @classmethod
    def unknown(cls, size: int, chunk_size: int, *, checksum: str | None = None,
                os_hash_value: str | None = None) -> "Manifest":
        """A manifest whose chunk addresses are learned by the first fill of each chunk."""
        return cls(size, chunk_size, (None,) * cls.chunk_count(size, chunk_size), checksum, os_hash_value)

    def chunk_range(self, index: int) -> ByteRange:
        """Where chunk ``index`` lies in the image."""
        start = index * self.chunk_size
        return ByteRange(start, min(start + self.chunk_size, self.size))

    def with_chunk(self, index: int, address: bytes) -> "Manifest":
        chunks = list(self.chunks)
        chunks[index] = address
        return replace(self, chunks=tuple(chunks))

    def with_collision(self, index: int) -> "Manifest":
        return replace(self, collisions=self.collisions | {index})

    def cacheable_addresses(self) -> set[bytes]:
        """Distinct known addresses of chunks that may be cached (what the index refcounts)."""
        return {a for i, a in enumerate(self.chunks) if a is not None and i not in self.collisions}

    def encode(self) -> bytes:
        head = json.dumps({
            "v": 1, "size": self.size, "chunk_size": self.chunk_size, "checksum": self.checksum,
            "os_hash_value": self.os_hash_value, "collisions": sorted(self.collisions),
        }, separators=(",", ":")).encode()
        body = b"".join(_ABSENT if a is None else b"\1" + a for a in self.chunks)
        return _HEADER.pack(len(head)) + head + body

    @classmethod
    def decode(cls, data: bytes) -> "Manifest":
        (n,) = _HEADER.unpack_from(data)
        head = json.loads(data[_HEADER.size:_HEADER.size + n])
        body = memoryview(data)[_HEADER.size + n:]
        step = ADDRESS_SIZE + 1
        chunks = tuple(
            bytes(body[i + 1:i + step]) if body[i] else None for i in range(0, len(body), step)
        )
        return cls(head["size"], head["chunk_size"], chunks, head["checksum"], head["os_hash_value"],
                   frozenset(head["collisions"]))


class ManifestTable:
    """The ``manifests`` named database. Methods take the caller's transaction."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.db = env.open_db(b"manifests")

    def get(self, txn: lmdb.Transaction, image_id: str) -> Manifest | None:
        raw = txn.get(image_id.encode(), db=self.db)
        return None if raw is None else Manifest.decode(bytes(raw))

    def put(self, txn: lmdb.Transaction, image_id: str, manifest: Manifest) -> None:
        txn.put(image_id.encode(), manifest.encode(), db=self.db)

    def delete(self, txn: lmdb.Transaction, image_id: str) -> Manifest | None:
        old = self.get(txn, image_id)
        if old is not None:
            txn.delete(image_id.encode(), db=self.db)
        return old

    def image_ids(self, txn: lmdb.Transaction) -> list[str]:
        return [bytes(k).decode() for k in txn.cursor(db=self.db).iternext(keys=True, values=False)]
