"""The content-addressed chunk cache: manifests, chunk files, single-flight fills, eviction.

Knows nothing of HTTP; reads image stores only through :mod:`backends.base` Protocols.
The service talks to :class:`ImageCache`.
"""

from .cleaner import AuditResult, CleanResult
from .digests import OS_HASH_ALGO, ImageDigests
from .errors import CacheError, UpstreamCorrupt, UpstreamFailed
from .file_slice import FileSlice
from .image_cache import ImageCache
from .prefetch import PrefetchResult
from .ingest import Ingest
from .manifest import Manifest
from .pruner import PruneResult

__all__ = [
    "AuditResult",
    "CacheError",
    "CleanResult",
    "FileSlice",
    "ImageCache",
    "ImageDigests",
    "Ingest",
    "Manifest",
    "OS_HASH_ALGO",
    "PrefetchResult",
    "PruneResult",
    "UpstreamCorrupt",
    "UpstreamFailed",
]
