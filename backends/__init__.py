"""Upstream stores behind one async interface, chosen by URL scheme.

Backend classes are imported lazily, so a store's heavy dependencies stay optional.
:class:`Backends` holds the configured stores by name (:mod:`backends.stores`);
:class:`FailoverBackend` reads an object from the first of its copies that answers.
"""

from __future__ import annotations

from .base import (
    PIECE_SIZE,
    BackendCorrupt,
    BackendError,
    BackendFull,
    BackendNotFound,
    BackendUnavailable,
    ByteRange,
    CheckableBackend,
    LocalBackend,
    ReadBackend,
    WriteBackend,
    Writer,
    local_file,
)
from .failover import Copy, FailoverBackend
from .stores import STORE_KINDS, Backends, StoreConfig, UnknownScheme, UnknownStore, check_store

__all__ = [
    "PIECE_SIZE",
    "STORE_KINDS",
    "BackendCorrupt",
    "BackendError",
    "BackendFull",
    "BackendNotFound",
    "BackendUnavailable",
    "Backends",
    "ByteRange",
    "CheckableBackend",
    "Copy",
    "FailoverBackend",
    "LocalBackend",
    "local_file",
    "ReadBackend",
    "StoreConfig",
    "UnknownScheme",
    "UnknownStore",
    "WriteBackend",
    "Writer",
    "check_store",
]
