"""The image service: every workflow behind the API, one area per module.

A route parses, authorizes through these methods, calls one of them and renders.
Workflows touch the registry, the cache and the stores; the routes never do. Methods
raise :class:`imgproxy.errors.ApiError` subclasses before a response begins, and
:class:`ImageDataError` while image bytes stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cache_admin import CLEAR_TARGETS, CacheAdmin
from .deletes import Deletes
from .downloads import PIECE_SIZE, Download, Downloads, FileSlice, Piece
from .errors import ImageDataError
from .imports import Imports
from .legacy_tasks import LegacyTasks
from .locations import ImageLocations
from .members import ImageMembers
from .records import BodyReader, ImageRecords
from .stores import ImageStores
from .uploads import Uploads

if TYPE_CHECKING:
    from ..service import Service

__all__ = [
    "BodyReader",
    "CLEAR_TARGETS",
    "CacheAdmin",
    "Deletes",
    "Download",
    "Downloads",
    "FileSlice",
    "PIECE_SIZE",
    "Piece",
    "ImageDataError",
    "ImageLocations",
    "ImageMembers",
    "ImageRecords",
    "ImageStores",
    "Imports",
    "Images",
    "LegacyTasks",
    "Uploads",
]


class Images:
    """The image service of one process: its workflow areas, sharing the service's resources."""

    def __init__(self, service: "Service") -> None:
        self.records = ImageRecords(service)
        self.deletes = Deletes(service)
        self.members = ImageMembers(service)
        self.uploads = Uploads(service)
        self.downloads = Downloads(service)
        self.locations = ImageLocations(service)
        self.cache = CacheAdmin(service)
        self.stores = ImageStores(service)
        self.imports = Imports(service)
        self.legacy_tasks = LegacyTasks(service)
