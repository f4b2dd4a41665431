"""Index-mined negatives for training: embed the training items with the current model into an
embedded store, then mine each pair's hardest non-positives with indexer.mining."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from encoders.modality import Modality
from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match
from indexer.mining import MiningParams, mine_hard_negatives
from indexer.schema import CollectionSchema, PointRecord, point_id
from trainer.config import MiningCfg
from trainer.data import Decoded, ItemCache
from trainer.manifest import ItemRef, Pair
from trainer.towers import Towers


class IndexMiner:
    def __init__(self, cfg: MiningCfg, towers: Towers, cache: ItemCache, pairs: Sequence[Pair]) -> None:
        self.params = MiningParams(
            k=cfg.k, max_fraction_of_positive=cfg.max_fraction_of_positive, near_duplicate=cfg.near_duplicate
        )
        self.towers = towers
        self.cache = cache
        self.pairs = pairs
        self.refs = {r.key: r for p in pairs for r in (p.a, p.b)}
        self.negatives: dict[tuple[str, Modality], list[str]] = {}
        self.refreshes = 0

    @torch.no_grad()
    def refresh(self, batch_size: int = 256) -> None:
        """Re-embed every item with the current weights and re-mine every pair's negatives."""
        refs = self.refs
        modules = [m for m in (self.towers.bundle.model, self.towers.bundle.audio) if m is not None]
        was_training = [m.training for m in modules]
        for m in modules:  # inference mode: BatchNorm must not learn from the mining pass
            m.eval()
        self.towers.training = False
        try:
            self._remine(refs, batch_size)
        finally:
            self.towers.training = True
            for m, flag in zip(modules, was_training, strict=True):
                m.train(flag)
        self.refreshes += 1

    def _remine(self, refs: dict[str, ItemRef], batch_size: int) -> None:
        group_of = {r.key: p.group for p in self.pairs for r in (p.a, p.b)}
        vectors: dict[str, np.ndarray] = {}
        by_modality: dict[Modality, list[str]] = {}
        for key, ref in refs.items():
            by_modality.setdefault(ref.modality, []).append(key)
        for modality, keys in by_modality.items():
            for i in range(0, len(keys), batch_size):
                part = keys[i : i + batch_size]
                feats = self.towers.embed([self.cache.get(refs[k]) for k in part], modality)
                for k, v in zip(part, feats.float().cpu().numpy(), strict=True):
                    vectors[k] = v
        dim = next(iter(vectors.values())).shape[0]
        workdir = Path(tempfile.mkdtemp(prefix="mmsearch-mining-"))
        store = EdgeStore(workdir, CollectionSchema(bundle_id="training-index", dim=dim))
        try:
            store.upsert(
                [
                    PointRecord(
                        point_id(k), v, {"key": k, "group": group_of[k], "modality": refs[k].modality.value}
                    )
                    for k, v in vectors.items()
                ]
            )
            self.negatives.clear()
            for p in self.pairs:
                slot = (p.a.key, p.b.modality)
                if slot in self.negatives:
                    continue
                anchor, positive = vectors[p.a.key], vectors[p.b.key]
                found = mine_hard_negatives(
                    store,
                    anchor,
                    params=self.params,
                    positive_score=float(anchor @ positive),
                    group=p.group,
                    filter=FilterSpec(must=(Match("modality", p.b.modality.value),)),
                    exclude_ids=[point_id(p.a.key), point_id(p.b.key)],
                )
                self.negatives[slot] = [str(h.payload["key"]) for h in found]
        finally:
            store.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def for_batch(self, batch: Sequence[Pair]) -> tuple[list[Decoded], torch.Tensor]:
        """The mined negatives of a batch's anchors and, for each, the row of its anchor."""
        items: list[Decoded] = []
        owners: list[int] = []
        for row, p in enumerate(batch):
            for key in self.negatives.get((p.a.key, p.b.modality), []):
                items.append(self.cache.get(self.refs[key]))
                owners.append(row)
        return items, torch.tensor(owners, dtype=torch.long)
