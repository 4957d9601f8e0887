"""The one LMDB environment under the data dir, and its named databases.

Reads are synchronous and cheap enough for the event loop. A write transaction
belongs to the thread that began it: never hold one across an ``await``.
"""

from __future__ import annotations

from pathlib import Path

import lmdb

__all__ = ["open_env"]

MAX_DBS = 32


def open_env(data_dir: Path, map_size: int) -> lmdb.Environment:
    """Open (creating if needed) ``<data_dir>/meta``.

    Several worker processes may open the same environment; LMDB serializes writers
    with its own lock file.
    """
    path = data_dir / "meta"
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=MAX_DBS,
        # One flush per commit keeps committed metadata durable; writes are batched
        # by callers so this costs one disk flush per logical change.
        sync=True,
        metasync=True,
        readahead=False,
        max_readers=512,
        lock=True,
    )
