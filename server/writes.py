"""The write service: upserts and deletes, and the background index build they leave due."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from indexer.inputs import ItemInput, ItemOutcome
from indexer.items import ItemIndexer
from indexer.store import VectorStore
from indexer.tenancy import namespace, tenant_store
from server import limits
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import InvalidArgument
from server.ids import MAX_ID_CHARS, IdResolver


class WriteService:
    def __init__(
        self, indexer: ItemIndexer, store: VectorStore, ids: IdResolver, config: ServerConfig
    ) -> None:
        self.indexer = indexer
        self.store = store
        self.ids = ids
        self.config = config
        self._dirty = threading.Event()

    def upsert(self, ctx: RequestContext, items: Sequence[ItemInput | InvalidArgument]) -> list[ItemOutcome]:
        """Write the items; each item that is malformed (given here as the error its conversion
        raised) or over a cap fails alone, with its own outcome, and the rest are written."""
        if not items:
            raise InvalidArgument("items is empty")
        if len(items) > self.config.max_batch_items:
            raise InvalidArgument(
                f"items has {len(items)} entries; at most {self.config.max_batch_items} per request"
            )
        outcomes = [ItemOutcome() for _ in items]
        good: dict[int, ItemInput] = {}
        for i, item in enumerate(items):
            try:
                if isinstance(item, InvalidArgument):
                    raise item
                self._check_item(item, f"items[{i}]")
                good[i] = item
            except InvalidArgument as exc:  # the item fails alone; the rest are written
                outcomes[i].error = exc.message
        indexer = self.indexer_for(ctx)
        written = indexer.index(list(good.values()), check=ctx.check, time_left=ctx.remaining)
        for i, outcome in zip(good, written, strict=True):
            outcomes[i] = outcome
        if any(o.error is None and not o.unchanged for o in outcomes):
            self._dirty.set()
        return outcomes

    def indexer_for(self, ctx: RequestContext) -> ItemIndexer:
        """An indexer that writes as the caller's tenant: ids in its namespace, its tenant on every
        point, and the unchanged-content check and stale-point cleanup within its points only.
        (`self.indexer` is the default tenant's, for local ingest without a server.)"""
        base = self.indexer
        return ItemIndexer(
            base.embedder,
            tenant_store(self.store, ctx.tenant),
            namespace=namespace(ctx.tenant),
            max_payload_bytes=base.max_payload_bytes,
        )

    def _check_item(self, item: ItemInput, where: str) -> None:
        cfg = self.config
        if isinstance(item.data, str):
            limits.check_text(
                item.data, cap=cfg.max_item_text_chars, setting="max_item_text_chars", where=f"{where}.text"
            )
        limits.check_source(item.source, cfg, f"{where}.source")
        if item.id is not None and len(item.id) > MAX_ID_CHARS:
            raise InvalidArgument(
                f"{where}.id has {len(item.id)} characters; an id has at most {MAX_ID_CHARS}"
            )
        limits.check_metadata(item.metadata, cfg, f"{where}.metadata")
        limits.check_metadata(item.attributes, cfg, f"{where}.attributes")

    def delete(self, ctx: RequestContext, ids: Sequence[str]) -> int:
        resolved = self.ids.resolve(ctx, ids, field="ids")
        ctx.check()
        tenant_store(self.store, ctx.tenant).delete(resolved)
        return len(resolved)

    def mark_written(self) -> None:
        """Points were written another way (WritePoints): build their index in the background."""
        self._dirty.set()

    def optimize_if_dirty(self) -> bool:
        """Build pending indexes after writes; returns whether it ran."""
        if not self._dirty.is_set():
            return False
        self._dirty.clear()
        self.store.optimize()
        return True
