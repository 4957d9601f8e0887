"""Glance's metadata definitions catalog: namespaces and their objects, properties, tags and
resource type associations, kept in the service's LMDB environment.

The API (``imgproxy/api/metadefs.py``) calls :class:`Metadefs`; ``imgproxy metadefs load``
calls :func:`load_path`.
"""

from .catalog import Metadefs
from .loader import LoadMode, LoadReport, load_path
from .schemas import SCHEMAS
from .store import MetadefStore

__all__ = ["Metadefs", "MetadefStore", "LoadMode", "LoadReport", "load_path", "SCHEMAS"]
