"""Whole-image digests (md5 ``checksum`` and sha512 ``os_hash_value``) in one pass.

hashlib releases the GIL while hashing a large buffer, so md5 (0.6 GB/s here) and
sha512 (0.7 GB/s) of the same piece run on two cores at once: one pass costs
max(md5, sha512) instead of their sum (~0.32 GB/s). Small pieces are hashed inline,
where a thread hand-off would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

__all__ = ["ImageDigests", "OS_HASH_ALGO"]

# The algorithm reported as ``os_hash_algo`` (Glance's default, hashing_algorithm).
OS_HASH_ALGO = "sha512"

# Pieces at least this big hash md5 on a helper thread (hand-off costs ~20-50 us;
# md5 of 256 KiB takes ~400 us).
PARALLEL_MIN = 256 * 1024


class ImageDigests:
    """md5 + sha512 of a byte stream, fed in order through :meth:`update`.

    A plain sync class: call it from a worker thread (it blocks while hashing).
    Not safe for concurrent use: one stream, one caller at a time. It owns at most
    one helper thread, started on the first large piece; call :meth:`close` (or
    use ``with``) when done so the thread ends.
    """

    def __init__(self, *, parallel_min: int = PARALLEL_MIN) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha512 = hashlib.sha512()
        self._parallel_min = parallel_min
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards _pool creation/shutdown only
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` (which must not change until this returns) to both digests."""
        n = len(data)
        if n == 0:
            return
        if n < self._parallel_min:
            self._md5.update(data)
            self._sha512.update(data)
        else:
            future = self._helper().submit(self._md5.update, data)
            self._sha512.update(data)
            future.result()
        self.size += n

    @property
    def checksum(self) -> str:
        """Hex md5 of everything so far (Glance's ``checksum``)."""
        return self._md5.hexdigest()

    @property
    def os_hash_algo(self) -> str:
        return OS_HASH_ALGO

    @property
    def os_hash_value(self) -> str:
        """Hex sha512 of everything so far (Glance's ``os_hash_value``)."""
        return self._sha512.hexdigest()

    def close(self) -> None:
        """Stop the helper thread. Digests stay readable; :meth:`update` restarts it."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _helper(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="md5")
            return self._pool

    def __enter__(self) -> "ImageDigests":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten close() must not leak an idle thread per upload.
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
