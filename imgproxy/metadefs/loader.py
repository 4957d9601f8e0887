"""Loading definition files in Glance's format (``glance-manage db_load_metadefs``).

A file is one namespace document, the body ``POST /v2/metadefs/namespaces`` takes: the
namespace's fields with its ``resource_type_associations``, ``properties``, ``objects`` and
``tags``. Files are validated as that body is (so whatever is loaded renders as the API
answers, and python-glanceclient accepts it); ``owner`` defaults to ``admin`` and the
resource types a file names are created protected, as Glance's loader does.

Each file is one write transaction: a bad file changes nothing and the others still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import lmdb

from ..errors import ApiError
from .namespaces import namespace_records
from .store import MetadefStore

__all__ = ["LoadMode", "LoadReport", "load_path"]


class LoadMode(Enum):
    """What to do with a namespace that exists (Glance's ``db_load_metadefs`` options)."""

    SKIP = "skip"  # leave it as it is (the default)
    MERGE = "merge"  # add what the file has and the namespace lacks
    PREFER_NEW = "prefer_new"  # merge, and the file's version wins where both have an item
    OVERWRITE = "overwrite"  # replace it with the file's namespace


@dataclass
class LoadReport:
    """Per file: what happened (``created``, ``skipped``, ``merged``, ``replaced``) or why it failed."""

    done: list[tuple[str, str, str]] = field(default_factory=list)  # (file, namespace, outcome)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".json")


def _merge(store: MetadefStore, txn: lmdb.Transaction, name: str, items: dict[str, list[dict[str, Any]]], prefer_new: bool) -> None:
    for kind, records in items.items():
        for item in records:
            old = store.item(txn, kind, name, item["name"])
            if old is not None and not prefer_new:
                continue
            if old is not None:
                item["_seq"] = old["_seq"]
                if "created_at" in old:
                    item["created_at"] = old["created_at"]
            if kind == "a":
                store.ensure_resource_type(txn, item["name"], protected=True)
            store.put_item(txn, kind, name, item)


def _load_one(store: MetadefStore, doc: Any, mode: LoadMode) -> tuple[str, str]:
    owner = doc.get("owner", "admin") if isinstance(doc, dict) else None
    record, items = namespace_records(store, doc, owner)
    name = str(record["namespace"])
    with store.write() as txn:
        old = store.namespace(txn, name)
        if old is not None and mode is LoadMode.SKIP:
            return name, "skipped (exists)"
        if old is not None and mode is LoadMode.OVERWRITE:
            store.delete_namespace(txn, name)
        if old is not None and mode in (LoadMode.MERGE, LoadMode.PREFER_NEW):
            if mode is LoadMode.PREFER_NEW:
                store.put_namespace(txn, {**record, "created_at": old["created_at"], "_seq": old["_seq"]})
            _merge(store, txn, name, items, prefer_new=mode is LoadMode.PREFER_NEW)
            return name, "merged"
        store.put_namespace(txn, record)
        _merge(store, txn, name, items, prefer_new=True)
        return name, "replaced" if old is not None else "created"


def load_path(store: MetadefStore, path: Path, mode: LoadMode = LoadMode.SKIP) -> LoadReport:
    """Load every ``*.json`` file of directory ``path`` (or the one file ``path``), in name order.

    Raises FileNotFoundError when ``path`` does not exist. Begins write transactions: call it
    off the event loop.
    """
    if not path.exists():
        raise FileNotFoundError(str(path))
    report = LoadReport()
    for file in _files(path):
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
            name, outcome = _load_one(store, doc, mode)
        except (OSError, UnicodeError, ValueError) as exc:
            report.failed.append((file.name, f"not a JSON document: {exc}"))
        except ApiError as exc:
            report.failed.append((file.name, exc.message))
        else:
            report.done.append((file.name, name, outcome))
    return report
