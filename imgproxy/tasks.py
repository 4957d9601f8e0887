"""Import tasks in LMDB: Glance's ``api_image_import`` task records.

Layout (named databases of the service's environment):

- ``tasks``: task id -> task JSON. Public fields as Glance's task API shows them; internal
  ones start with ``_``: ``_created_us``/``_updated_us``/``_expires_us`` (microseconds),
  ``_runner`` (the process running it, see :mod:`imgproxy.owners`).
- ``task_idx``: ``i<image id>\\0<created_us BE><task id>`` (an image's tasks) and
  ``r<task id>`` (tasks not finished: pending or processing), each -> ``b""``.

A task is written in the transaction that makes the image change it goes with (the import
lock, the status), through :meth:`TaskTable.put` inside that transaction. Finished tasks
expire ``TASK_TTL`` after they end (Glance's ``task_time_to_live``, 48 h); expired ones are
no longer shown and the cleaner deletes them. Reads may run anywhere; writes only inside a
write transaction (which the caller runs on the process's writer thread).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import lmdb

from cache.txn import write_txn

from .registry import format_time

__all__ = ["TaskTable", "TASK_STATUSES", "TASK_TTL", "RUNNING", "new_task", "run_input", "format_task_time",
           "task_view", "task_stub", "image_task_view"]

TASK_STATUSES = ("pending", "processing", "success", "failure")
RUNNING = frozenset({"pending", "processing"})
TASK_TTL = 48 * 3600  # seconds a finished task stays visible
_TS = 8


def format_task_time(us: int | None) -> str | None:
    """Glance's database time format, as its image task listing shows it (``...T..:..:..%f``)."""
    if us is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}"


def new_task(task_id: str, *, image_id: str, owner: str | None, user_id: str | None, request_id: str,
             task_input: dict[str, Any], runner: str, shown_input: dict[str, Any] | None = None,
             kind: str = "api_image_import") -> dict[str, Any]:
    """A pending import task record. ``task_input`` is what the import runs on (``image_id``,
    ``import_req``, ``backend``); ``shown_input``, when given, is the ``input`` the task API
    shows instead (a legacy ``import`` task shows the input its creator sent)."""
    now = time.time_ns() // 1000
    task: dict[str, Any] = {
        "id": task_id,
        "type": kind,
        "status": "pending",
        "input": task_input if shown_input is None else shown_input,
        "result": None,
        "owner": owner,
        "message": "",
        "image_id": image_id,
        "request_id": request_id,
        "user_id": user_id,
        "_created_us": now,
        "_updated_us": now,
        "_expires_us": None,
        "_runner": runner,
    }
    if shown_input is not None:
        task["_run"] = task_input
    return task


def run_input(task: dict[str, Any]) -> dict[str, Any]:
    """What an import task runs on (see :func:`new_task`)."""
    return cast(dict[str, Any], task.get("_run") or task["input"])


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _image_key(task: dict[str, Any]) -> bytes:
    image_id, task_id = str(task["image_id"]), str(task["id"])
    return b"i" + f"{image_id}\0".encode() + int(task["_created_us"]).to_bytes(_TS, "big") + task_id.encode()


class TaskTable:
    """Task records; see the module docs. Thread-safe as LMDB is."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self._tasks = env.open_db(b"tasks")
        self._idx = env.open_db(b"task_idx")

    # ---- inside a caller's write transaction ---------------------------------------------

    def put(self, txn: lmdb.Transaction, task: dict[str, Any]) -> None:
        """Insert or replace ``task`` (its indexes follow its status)."""
        task["_updated_us"] = max(time.time_ns() // 1000, int(task["_created_us"]))
        if task["status"] not in RUNNING and task.get("_expires_us") is None:
            task["_expires_us"] = task["_updated_us"] + TASK_TTL * 1_000_000
        txn.put(task["id"].encode(), _dumps(task), db=self._tasks)
        txn.put(_image_key(task), b"", db=self._idx)
        running_key = b"r" + task["id"].encode()
        if task["status"] in RUNNING:
            txn.put(running_key, b"", db=self._idx)
        else:
            txn.delete(running_key, db=self._idx)

    def load(self, txn: lmdb.Transaction, task_id: str) -> dict[str, Any] | None:
        raw = txn.get(task_id.encode(), db=self._tasks)
        return None if raw is None else cast(dict[str, Any], json.loads(bytes(raw)))

    # ---- reads ---------------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The task, or None if there is none (or it expired)."""
        with self.env.begin() as txn:
            task = self.load(txn, task_id)
        return None if task is None or _expired(task) else task

    def for_image(self, image_id: str) -> list[dict[str, Any]]:
        """The image's unexpired tasks, oldest first."""
        prefix = b"i" + f"{image_id}\0".encode()
        out = []
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._idx)
            if cursor.set_range(prefix):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    task = self.load(txn, bytes(key)[len(prefix) + _TS:].decode())
                    if task is not None and not _expired(task):
                        out.append(task)
        return out

    def running(self) -> list[dict[str, Any]]:
        """Tasks not finished (pending or processing)."""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._idx)
            ids = []
            if cursor.set_range(b"r"):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(b"r"):
                        break
                    ids.append(bytes(key)[1:].decode())
            return [t for t in (self.load(txn, i) for i in ids) if t is not None]

    def all(self) -> list[dict[str, Any]]:
        """Every unexpired task (a scan: call it off the event loop). Bounded by the TTL."""
        with self.env.begin() as txn:
            return [t for _, raw in txn.cursor(db=self._tasks)
                    if not _expired(t := cast(dict[str, Any], json.loads(bytes(raw))))]

    # ---- writes --------------------------------------------------------------------------

    def delete_expired(self) -> int:
        """Remove expired tasks; returns how many. Off the loop (it scans)."""
        with self.env.begin() as txn:
            expired = [t for _, raw in txn.cursor(db=self._tasks)
                       if _expired(t := cast(dict[str, Any], json.loads(bytes(raw))))]
        if not expired:
            return 0
        with write_txn(self.env) as txn:
            for task in expired:
                txn.delete(task["id"].encode(), db=self._tasks)
                txn.delete(_image_key(task), db=self._idx)
                txn.delete(b"r" + task["id"].encode(), db=self._idx)
        return len(expired)


def _expired(task: dict[str, Any]) -> bool:
    expires = task.get("_expires_us")
    return expires is not None and int(expires) <= time.time_ns() // 1000


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/tasks/{id}``: Glance's task document (``isotime`` times)."""
    view: dict[str, Any] = {
        "id": task["id"],
        "input": task.get("input"),
        "type": task["type"],
        "status": task["status"],
        "owner": task.get("owner"),
        "message": task.get("message") or "",
        "result": task.get("result"),
        "created_at": format_time(int(task["_created_us"])),
        "updated_at": format_time(int(task["_updated_us"])),
        "self": f"/v2/tasks/{task['id']}",
        "schema": "/v2/schemas/task",
    }
    for key in ("image_id", "request_id", "user_id"):
        if task.get(key):
            view[key] = task[key]
    if task.get("_expires_us") is not None:
        view["expires_at"] = format_time(int(task["_expires_us"]))
    return view


def task_stub(task: dict[str, Any]) -> dict[str, Any]:
    """A task in ``GET /v2/tasks``: no input, result nor message (Glance's partial schema)."""
    view = task_view(task)
    for key in ("input", "result", "message", "image_id", "request_id", "user_id"):
        view.pop(key, None)
    return view


def image_task_view(task: dict[str, Any]) -> dict[str, Any]:
    """A task in ``GET /v2/images/{id}/tasks``: Glance returns its database row there."""
    return {
        "id": task["id"],
        "type": task["type"],
        "status": task["status"],
        "owner": task.get("owner"),
        "expires_at": format_task_time(task.get("_expires_us")),
        "created_at": format_task_time(int(task["_created_us"])),
        "updated_at": format_task_time(int(task["_updated_us"])),
        "deleted_at": None,
        "deleted": False,
        "image_id": task.get("image_id"),
        "request_id": task.get("request_id"),
        "user_id": task.get("user_id"),
        "input": task.get("input"),
        "result": task.get("result"),
        "message": task.get("message") or "",
    }
