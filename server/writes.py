"""The write service: upserts and deletes, and the background index build they leave due."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from indexer.inputs import ItemInput, ItemOutcome
from indexer.items import ItemIndexer
from indexer.store import VectorStore
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import InvalidArgument
from server.ids import IdResolver


class WriteService:
    def __init__(
        self, indexer: ItemIndexer, store: VectorStore, ids: IdResolver, config: ServerConfig
    ) -> None:
        self.indexer = indexer
        self.store = store
        self.ids = ids
        self.config = config
        self._dirty = threading.Event()

    def upsert(self, ctx: RequestContext, items: Sequence[ItemInput]) -> list[ItemOutcome]:
        if not items:
            raise InvalidArgument("items is empty")
        if len(items) > self.config.max_batch_items:
            raise InvalidArgument(
                f"items has {len(items)} entries; at most {self.config.max_batch_items} per request"
            )
        outcomes = self.indexer.index(items, check=ctx.check)
        if any(o.error is None and not o.unchanged for o in outcomes):
            self._dirty.set()
        return outcomes

    def delete(self, ctx: RequestContext, ids: Sequence[str]) -> int:
        resolved = self.ids.resolve(ctx, ids, field="ids")
        ctx.check()
        self.store.delete(resolved)
        return len(resolved)

    def optimize_if_dirty(self) -> bool:
        """Build pending indexes after writes; returns whether it ran."""
        if not self._dirty.is_set():
            return False
        self._dirty.clear()
        self.store.optimize()
        return True
