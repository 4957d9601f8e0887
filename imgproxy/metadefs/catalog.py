"""The metadata definitions service the API calls: the async shell over the sync workflows.

Writes run on the process's :class:`cache.txn.DbWriter` (one writer thread; a write
transaction fsyncs when it commits and must not stall the event loop). Reads that walk a
namespace's items or every namespace run on a worker thread; a single item is a point read,
cheap enough for the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import lmdb

from cache.txn import DbWriter

from ..context import RequestContext
from .items import Items
from .namespaces import Namespaces
from .query import ListQuery
from .store import MetadefStore
from .views import NamespaceDetail, NamespacePage

__all__ = ["Metadefs", "OffLoop"]

Record = dict[str, Any]
T = TypeVar("T")


class OffLoop(Protocol):
    """Runs a blocking read on a worker thread (``asyncio.to_thread``, or the service's reader pool)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


class Metadefs:
    """Namespaces and what they hold, for one worker process (see the module docstring)."""

    def __init__(self, env: lmdb.Environment, writer: DbWriter, read: OffLoop = asyncio.to_thread) -> None:
        self.store = MetadefStore(env)
        self.namespaces = Namespaces(self.store)
        self.items = Items(self.store)
        self._writer = writer
        self._read = read

    # ---- namespaces --------------------------------------------------------------------

    async def list_namespaces(self, ctx: RequestContext, query: ListQuery) -> NamespacePage:
        return await self._read(self.namespaces.list, ctx, query)

    async def create_namespace(self, ctx: RequestContext, body: Any) -> NamespaceDetail:
        return await self._writer.run(self.namespaces.create, ctx, body)

    async def show_namespace(self, ctx: RequestContext, name: str, resource_type: str | None = None) -> NamespaceDetail:
        return await self._read(self.namespaces.show, ctx, name, resource_type)

    async def update_namespace(self, ctx: RequestContext, name: str, body: Any) -> Record:
        return await self._writer.run(self.namespaces.update, ctx, name, body)

    async def delete_namespace(self, ctx: RequestContext, name: str) -> None:
        await self._writer.run(self.namespaces.delete, ctx, name)

    async def delete_content(self, ctx: RequestContext, name: str, kind: str) -> None:
        """Every item of one kind (``o``, ``p``, ``t``) in the namespace."""
        await self._writer.run(self.namespaces.delete_content, ctx, name, kind)

    # ---- objects -----------------------------------------------------------------------

    async def list_objects(self, ctx: RequestContext, ns: str, query: ListQuery) -> list[Record]:
        return await self._read(self.items.list_objects, ctx, ns, query)

    def show_object(self, ctx: RequestContext, ns: str, name: str) -> Record:
        return self.items.show_object(ctx, ns, name)

    async def create_object(self, ctx: RequestContext, ns: str, body: Any) -> Record:
        return await self._writer.run(self.items.create_object, ctx, ns, body)

    async def update_object(self, ctx: RequestContext, ns: str, name: str, body: Any) -> Record:
        return await self._writer.run(self.items.update_object, ctx, ns, name, body)

    async def delete_object(self, ctx: RequestContext, ns: str, name: str) -> None:
        await self._writer.run(self.items.delete_object, ctx, ns, name)

    # ---- properties --------------------------------------------------------------------

    async def list_properties(self, ctx: RequestContext, ns: str) -> list[Record]:
        return await self._read(self.items.list_properties, ctx, ns)

    def show_property(self, ctx: RequestContext, ns: str, name: str, resource_type: str | None) -> Record:
        return self.items.show_property(ctx, ns, name, resource_type)

    async def create_property(self, ctx: RequestContext, ns: str, body: Any) -> Record:
        return await self._writer.run(self.items.create_property, ctx, ns, body)

    async def update_property(self, ctx: RequestContext, ns: str, name: str, body: Any) -> Record:
        return await self._writer.run(self.items.update_property, ctx, ns, name, body)

    async def delete_property(self, ctx: RequestContext, ns: str, name: str) -> None:
        await self._writer.run(self.items.delete_property, ctx, ns, name)

    # ---- tags --------------------------------------------------------------------------

    async def list_tags(self, ctx: RequestContext, ns: str, query: ListQuery) -> list[Record]:
        return await self._read(self.items.list_tags, ctx, ns, query)

    def show_tag(self, ctx: RequestContext, ns: str, name: str) -> Record:
        return self.items.show_tag(ctx, ns, name)

    async def create_tag(self, ctx: RequestContext, ns: str, name: str) -> Record:
        return await self._writer.run(self.items.create_tag, ctx, ns, name)

    async def create_tags(self, ctx: RequestContext, ns: str, body: Any, append: bool) -> list[Record]:
        return await self._writer.run(self.items.create_tags, ctx, ns, body, append)

    async def update_tag(self, ctx: RequestContext, ns: str, name: str, body: Any) -> Record:
        return await self._writer.run(self.items.update_tag, ctx, ns, name, body)

    async def delete_tag(self, ctx: RequestContext, ns: str, name: str) -> None:
        await self._writer.run(self.items.delete_tag, ctx, ns, name)

    # ---- resource types ----------------------------------------------------------------

    async def list_resource_types(self, ctx: RequestContext) -> list[Record]:
        return await self._read(self.items.list_resource_types, ctx)

    async def list_associations(self, ctx: RequestContext, ns: str) -> list[Record]:
        return await self._read(self.items.list_associations, ctx, ns)

    async def create_association(self, ctx: RequestContext, ns: str, body: Any) -> Record:
        return await self._writer.run(self.items.create_association, ctx, ns, body)

    async def delete_association(self, ctx: RequestContext, ns: str, name: str) -> None:
        await self._writer.run(self.items.delete_association, ctx, ns, name)
