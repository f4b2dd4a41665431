"""Mined negatives for training: embed the training items with the current weights and pick each
anchor's hardest non-positives with one matrix product, through indexer.mining's false-negative
filters (the same ones the server's mining RPC uses). No temporary vector store: the items fit in
memory, and an exact product is both faster and exact."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from encoders.embed import Decoded
from encoders.modality import Modality
from indexer.mining import MiningParams, mine_in_memory
from trainer.config import MiningCfg
from trainer.data import ItemCache
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
        modules = [m for m in (self.towers.bundle.model, self.towers.bundle.audio) if m is not None]
        was_training = [m.training for m in modules]
        for m in modules:  # inference mode: BatchNorm must not learn from the mining pass
            m.eval()
        self.towers.training = False
        try:
            self._remine(self.refs, batch_size)
        finally:
            self.towers.training = True
            for m, flag in zip(modules, was_training, strict=True):
                m.train(flag)
        self.refreshes += 1

    def _remine(self, refs: dict[str, ItemRef], batch_size: int) -> None:
        group_of = {r.key: p.group for p in self.pairs for r in (p.a, p.b)}
        keys: dict[Modality, list[str]] = {}
        for key, ref in refs.items():
            keys.setdefault(ref.modality, []).append(key)
        matrices: dict[Modality, np.ndarray] = {}
        for modality, ks in keys.items():
            parts = [
                self.towers.embed([self.cache.get(refs[k]) for k in ks[i : i + batch_size]], modality)
                for i in range(0, len(ks), batch_size)
            ]
            matrices[modality] = torch.cat(parts).float().cpu().numpy()
        row = {k: i for ks in keys.values() for i, k in enumerate(ks)}
        groups = {m: np.array([group_of[k] for k in ks]) for m, ks in keys.items()}
        self.negatives.clear()
        for p in self.pairs:
            slot = (p.a.key, p.b.modality)
            if slot in self.negatives:
                continue
            anchor = matrices[p.a.modality][row[p.a.key]]
            targets = matrices[p.b.modality]
            # Same group (the positive included) and the anchor itself are never negatives.
            excluded = groups[p.b.modality] == p.group
            if p.a.modality == p.b.modality:
                excluded[row[p.a.key]] = True
            picked = mine_in_memory(
                anchor,
                targets,
                self.params,
                positive_score=float(anchor @ targets[row[p.b.key]]),
                excluded=excluded,
            )
            self.negatives[slot] = [keys[p.b.modality][i] for i in picked]

    def for_batch(self, batch: Sequence[Pair]) -> tuple[list[Decoded], torch.Tensor]:
        """The mined negatives of a batch's anchors and, for each, the row of its anchor."""
        items: list[Decoded] = []
        owners: list[int] = []
        for r, p in enumerate(batch):
            for key in self.negatives.get((p.a.key, p.b.modality), []):
                items.append(self.cache.get(self.refs[key]))
                owners.append(r)
        return items, torch.tensor(owners, dtype=torch.long)
