"""The import's state changes in LMDB: image record and task, one transaction each.

Glance's import keeps its state on the image (``status``, and the reserved properties
``os_glance_import_task`` (the lock: the task that may change the image),
``os_glance_importing_to_stores``, ``os_glance_failed_import``, ``os_glance_stage_host``)
and in a task record. Here each step changes both in one write transaction, so a crash
leaves either the state before a step or after it, never a mix; and a restart finds the
interrupted imports (tasks ``pending``/``processing`` whose ``_runner`` process is dead)
and fails them (:meth:`ImportRecords.fail_orphans`).

Every method is synchronous and opens a write transaction: call them through the
process's ``DbWriter``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lmdb

from cache.txn import write_txn

from .attrs import BASE
from .errors import Conflict, Gone, NotFound
from .owners import current_owner, owner_alive
from .registry import Registry
from .tasks import RUNNING, TaskTable, run_input

__all__ = ["ImportRecords", "LOCK", "IMPORTING", "FAILED", "STAGE_HOST", "merge_list"]

LOCK = "os_glance_import_task"
IMPORTING = "os_glance_importing_to_stores"
FAILED = "os_glance_failed_import"
STAGE_HOST = "os_glance_stage_host"
_STAGE_OWNER = "_stage_owner"


def merge_list(record: dict[str, Any], key: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
    """Add/remove names in a comma-separated property, in order, without duplicates (an
    empty list leaves the property as ``""``: Glance shows both lists once an import began)."""
    names = [n for n in str(record.get(key) or "").split(",") if n]
    for name in remove:
        names = [n for n in names if n != name]
    for name in add:
        if name not in names:
            names.append(name)
    record[key] = ",".join(names)


class ImportRecords:
    """Import steps over the image registry and the task table."""

    def __init__(self, registry: Registry, tasks: TaskTable) -> None:
        self.registry = registry
        self.tasks = tasks
        self.env: lmdb.Environment = registry.env

    def _image(self, txn: lmdb.Transaction, image_id: str) -> dict[str, Any]:
        record = self.registry.load(txn, image_id)
        if record is None or record.get("status") == "deleted":
            raise NotFound(f"No image found with ID {image_id}")
        return record

    # ---- glance-direct's stage ----------------------------------------------------------

    def begin_stage(self, image_id: str) -> None:
        """queued -> uploading, marked with this process (Conflict unless queued)."""
        with write_txn(self.env) as txn:
            old = self._image(txn, image_id)
            if old["status"] != "queued":
                raise Conflict(f"Image {image_id} is not queued (status {old['status']}); its data cannot be staged.")
            self.registry.save(txn, old, dict(old, status="uploading", **{_STAGE_OWNER: current_owner()}))

    def end_stage(self, image_id: str, size: int, host: str) -> bool:
        """The staged data is complete: record its size and where it is. False if the
        image moved on meanwhile (deleted)."""
        with write_txn(self.env) as txn:
            old = self.registry.load(txn, image_id)
            if old is None or old.get("status") != "uploading" or _STAGE_OWNER not in old:
                return False
            new = {k: v for k, v in old.items() if k != _STAGE_OWNER}
            self.registry.save(txn, old, dict(new, size=size, **{STAGE_HOST: host}))
            return True

    def fail_stage(self, image_id: str) -> None:
        """uploading (still staging) -> queued; a no-op otherwise."""
        with write_txn(self.env) as txn:
            old = self.registry.load(txn, image_id)
            if old is None or old.get("status") != "uploading" or _STAGE_OWNER not in old:
                return
            new = {k: v for k, v in old.items() if k not in (_STAGE_OWNER, STAGE_HOST)}
            self.registry.save(txn, old, dict(new, status="queued", size=None))

    def requeue_orphaned_stages(self, image_ids: Iterable[str]) -> list[str]:
        """Of ``image_ids`` (images ``uploading``), put back to queued those whose staging
        process died before it finished. Returns them."""
        done = []
        for image_id in image_ids:
            with write_txn(self.env) as txn:
                old = self.registry.load(txn, image_id)
                owner = old.get(_STAGE_OWNER) if old else None
                if old is None or old.get("status") != "uploading" or owner is None or owner_alive(owner):
                    continue
                new = {k: v for k, v in old.items() if k not in (_STAGE_OWNER, STAGE_HOST)}
                self.registry.save(txn, old, dict(new, status="queued", size=None))
                done.append(image_id)
        return done

    # ---- the import ---------------------------------------------------------------------

    def begin(self, image_id: str, task: dict[str, Any], stores: list[str],
              check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Take the import lock for ``task`` and mark the image, in one transaction.

        ``check(record)`` runs first (status and format rules; it raises Conflict). A lock
        held by a running task whose process lives is a Conflict; one left by a dead
        process is broken (that task fails). Returns the image record.
        """
        with write_txn(self.env) as txn:
            old = self._image(txn, image_id)
            check(old)
            holder_id = old.get(LOCK)
            if holder_id:
                holder = self.tasks.load(txn, str(holder_id))
                if holder is not None and holder["status"] in RUNNING and owner_alive(str(holder.get("_runner"))):
                    raise Conflict(f"New operation on image '{image_id}' is not permitted as prior operation "
                                   "is still in progress")
                if holder is not None and holder["status"] in RUNNING:
                    self.tasks.put(txn, dict(holder, status="failure",
                                             message="Interrupted: the process running it stopped."))
            new = dict(old, **{LOCK: task["id"]})
            if run_input(task)["import_req"]["method"]["name"] != "copy-image":
                new["status"] = "importing"
            merge_list(new, IMPORTING, add=stores)
            merge_list(new, FAILED, remove=stores)
            new.pop(STAGE_HOST, None)
            self.tasks.put(txn, task)
            return self.registry.save(txn, old, new)

    def _locked(self, txn: lmdb.Transaction, image_id: str, task_id: str) -> dict[str, Any]:
        """The image if ``task_id`` still holds its lock; Gone otherwise (deleted, or broken)."""
        record = self.registry.load(txn, image_id)
        if record is None or record.get("status") == "deleted" or record.get(LOCK) != task_id:
            raise Gone(f"Image {image_id} was deleted or changed during the import")
        return record

    def processing(self, task_id: str) -> None:
        with write_txn(self.env) as txn:
            task = self.tasks.load(txn, task_id)
            if task is not None and task["status"] == "pending":
                self.tasks.put(txn, dict(task, status="processing", _runner=current_owner()))

    def set_metadata(self, image_id: str, task_id: str, attrs: dict[str, Any]) -> None:
        """Set attributes and properties the import learned (glance-download's copy of the
        source's formats and properties) while it holds the lock."""
        with write_txn(self.env) as txn:
            old = self._locked(txn, image_id, task_id)
            self.registry.save(txn, old, dict(old, **attrs))

    def store_done(self, image_id: str, task_id: str, store: str, location: str, *, activate: bool,
                   data: dict[str, Any] | None = None, also: Callable[[lmdb.Transaction], None] | None = None) -> None:
        """One store holds the data: add its location; with ``data`` (size and digests) and
        ``activate`` the image turns active. Raises Gone if the lock is no longer held."""
        with write_txn(self.env) as txn:
            old = self._locked(txn, image_id, task_id)
            new = dict(old, **(data or {}))
            locations = list(new.get("_locations") or [])
            locations.append({"url": location, "metadata": {"store": store}})
            new["_locations"] = locations
            merge_list(new, IMPORTING, remove=[store])
            if activate and new["status"] == "importing":
                new["status"] = "active"
            if also is not None:
                also(txn)
            self.registry.save(txn, old, new)

    def store_failed(self, image_id: str, task_id: str, store: str) -> None:
        with write_txn(self.env) as txn:
            old = self._locked(txn, image_id, task_id)
            new = dict(old)
            merge_list(new, IMPORTING, remove=[store])
            merge_list(new, FAILED, add=[store])
            self.registry.save(txn, old, new)

    def succeed(self, image_id: str, task_id: str) -> None:
        """The task succeeded: drop the lock, record the result."""
        with write_txn(self.env) as txn:
            task = self.tasks.load(txn, task_id)
            if task is not None:
                self.tasks.put(txn, dict(task, status="success", result={"image_id": image_id}, message=""))
            record = self.registry.load(txn, image_id)
            if record is not None and record.get(LOCK) == task_id:
                self.registry.save(txn, record, {k: v for k, v in record.items() if k != LOCK})

    def fail(self, image_id: str, task_id: str, message: str, stores: list[str],
             revert: dict[str, Any] | None = None, drop: Iterable[str] = ()) -> dict[str, Any] | None:
        """The task failed: its stores not done go to ``os_glance_failed_import``, the
        locations in ``drop`` (data it wrote, now deleted) go, an image still ``importing``
        goes back to ``queued`` (with ``revert`` applied: attributes the import had set; a
        property whose old value is None is removed), the lock goes. Returns the image
        record (None if deleted)."""
        with write_txn(self.env) as txn:
            task = self.tasks.load(txn, task_id)
            if task is not None and task["status"] in RUNNING:
                self.tasks.put(txn, dict(task, status="failure", message=message))
            old = self.registry.load(txn, image_id)
            if old is None or old.get("status") == "deleted" or old.get(LOCK) != task_id:
                return old
            new = {k: v for k, v in old.items() if k != LOCK}
            pending = [n for n in str(new.get(IMPORTING) or "").split(",") if n and n in stores]
            merge_list(new, IMPORTING, remove=pending)
            merge_list(new, FAILED, add=pending)
            dropped = set(drop)
            new["_locations"] = [loc for loc in new.get("_locations") or [] if loc.get("url") not in dropped]
            if new["status"] == "importing":
                for key, value in (revert or {}).items():
                    if value is None and key not in BASE:
                        new.pop(key, None)
                    else:
                        new[key] = value
                new.update(status="queued", size=None, checksum=None, os_hash_algo=None, os_hash_value=None,
                           _locations=[])
            return self.registry.save(txn, old, new)

    def orphans(self) -> list[dict[str, Any]]:
        """Running tasks whose process died (crash, kill -9)."""
        return [t for t in self.tasks.running() if not owner_alive(str(t.get("_runner")))]
