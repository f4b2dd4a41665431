"""Mined negatives for training, through indexer.mining's false-negative filters (the same ones the
server's mining RPC uses).

Every training item has a vector in a bank: each training step writes the vectors it computed
anyway, so keeping the bank fresh costs no extra forward pass. With `initial_embed`, every item
is embedded with the current weights when mining starts (and again every `reembed_every`
re-minings, if set); without it, items no step has embedded yet are left out of the mining. Every `refresh_every` steps each pair's anchor gets its `k` hardest candidates of
other groups, scored against the bank with one matrix product per pair kind. No vector store: the
items fit in memory, and an exact product is both faster and exact.

Two placements of the mined negatives:

- "batch": a batch is made of seed pairs plus, for each seed, the pairs whose b side is one of
  its mined negatives. The confusers then compete in both directions and for every anchor of the
  batch, at the cost of a plain batch of the same size.
- "append": each anchor's mined b items are embedded as extra candidates for that anchor only
  (a -> b direction); each costs a forward pass.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from encoders.embed import Decoded
from encoders.modality import Modality
from indexer.mining import Candidate, MiningParams, select_negatives
from trainer.config import MiningCfg
from trainer.data import ItemCache
from trainer.manifest import ItemRef, Pair
from trainer.towers import Towers

Kind = tuple[Modality, Modality]
Slot = tuple[str, Modality]  # (anchor key, modality of the b side)


class IndexMiner:
    def __init__(self, cfg: MiningCfg, towers: Towers, cache: ItemCache, pairs: Sequence[Pair]) -> None:
        self.cfg = cfg
        self.params = MiningParams(
            k=cfg.k, max_fraction_of_positive=cfg.max_fraction_of_positive, near_duplicate=cfg.near_duplicate
        )
        self.towers = towers
        self.cache = cache
        self.pairs = list(pairs)
        self.refs = {r.key: r for p in pairs for r in (p.a, p.b)}
        self.group = {r.key: p.group for p in pairs for r in (p.a, p.b)}
        self.keys: dict[Modality, list[str]] = {}
        for key, ref in self.refs.items():
            self.keys.setdefault(ref.modality, []).append(key)
        self.row = {k: i for ks in self.keys.values() for i, k in enumerate(ks)}
        self.bank: dict[Modality, np.ndarray] = {}
        self.seen: dict[Modality, np.ndarray] = {}  # rows that hold a vector
        self.by_b: dict[tuple[Kind, str], list[Pair]] = {}
        for p in pairs:
            self.by_b.setdefault((p.kind, p.b.key), []).append(p)
        self.negatives: dict[Slot, list[str]] = {}
        self.refreshes = 0  # full re-embeddings
        self.reminings = 0
        self.started_at: int | None = None

    # -- schedule -----------------------------------------------------------------------------

    def step(self, step: int, progress: float) -> None:
        """Called before each training step: starts mining once `start_after` of the budget has
        passed (random batches first, so the space means something), then re-mines every
        `refresh_every` steps, re-embedding everything every `reembed_every` re-minings."""
        if self.started_at is None:
            if progress < self.cfg.start_after:
                return
            self.started_at = step
        since = step - self.started_at
        if since % self.cfg.refresh_every:
            return
        every = self.cfg.reembed_every
        if (self.reminings == 0 and self.cfg.initial_embed) or (every and self.reminings % every == 0):
            self.refresh()
        self.remine()

    @property
    def active(self) -> bool:
        return bool(self.negatives)

    # -- the bank -----------------------------------------------------------------------------

    @torch.no_grad()
    def refresh(self, batch_size: int = 256) -> None:
        """Re-embed every item with the current weights, in inference mode."""
        modules = [m for m in (self.towers.bundle.model, self.towers.bundle.audio) if m is not None]
        was_training = [m.training for m in modules]
        for m in modules:  # inference mode: BatchNorm must not learn from the mining pass
            m.eval()
        self.towers.training = False
        try:
            for modality, ks in self.keys.items():
                parts = [
                    self.towers.embed(
                        [self.cache.get(self.refs[k]) for k in ks[i : i + batch_size]], modality
                    )
                    for i in range(0, len(ks), batch_size)
                ]
                self.bank[modality] = torch.cat(parts).float().cpu().numpy()
                self.seen[modality] = np.ones(len(ks), dtype=bool)
        finally:
            self.towers.training = True
            for m, flag in zip(modules, was_training, strict=True):
                m.train(flag)
        self.refreshes += 1

    def observe(self, refs: Sequence[ItemRef], vectors: torch.Tensor) -> None:
        """Write vectors a training step computed into the bank."""
        if not refs:
            return
        modality = refs[0].modality
        if modality not in self.bank:
            self.bank[modality] = np.zeros((len(self.keys[modality]), vectors.shape[1]), dtype=np.float32)
            self.seen[modality] = np.zeros(len(self.keys[modality]), dtype=bool)
        rows = [self.row[r.key] for r in refs]
        self.bank[modality][rows] = vectors.detach().float().cpu().numpy()
        self.seen[modality][rows] = True

    # -- mining -------------------------------------------------------------------------------

    def remine(self) -> None:
        """Each pair's anchor's hardest b items of other groups, through the shared filters."""
        self.negatives.clear()
        slots: dict[Kind, list[Pair]] = {}
        seen: set[Slot] = set()
        for p in self.pairs:
            if (p.a.key, p.b.modality) not in seen:
                seen.add((p.a.key, p.b.modality))
                slots.setdefault(p.kind, []).append(p)
        for (ma, mb), kind_slots in slots.items():
            if ma not in self.bank or mb not in self.bank:
                continue
            # Only anchors whose own vector and positive's vector exist; only targets that exist.
            ps = [
                p for p in kind_slots if self.seen[ma][self.row[p.a.key]] and self.seen[mb][self.row[p.b.key]]
            ]
            if not ps:
                continue
            anchors = self.bank[ma][[self.row[p.a.key] for p in ps]]
            targets = self.bank[mb]
            scores = anchors @ targets.T
            target_groups = np.array([self.group[k] for k in self.keys[mb]])
            excluded = target_groups[None, :] == np.array([p.group for p in ps])[:, None]
            excluded |= ~self.seen[mb][None, :]
            if ma == mb:  # an item is never its own negative
                excluded[np.arange(len(ps)), [self.row[p.a.key] for p in ps]] = True
            scores = np.where(excluded, -np.inf, scores)
            positive = (anchors * targets[[self.row[p.b.key] for p in ps]]).sum(axis=1)
            top = min(scores.shape[1], self.cfg.k * 8)
            best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            for i, p in enumerate(ps):
                picked = self._select(scores[i], best[i], float(positive[i]))
                self.negatives[(p.a.key, mb)] = [self.keys[mb][j] for j in picked]
        self.reminings += 1

    def _select(self, scores: np.ndarray, best: np.ndarray, positive: float) -> list[int]:
        def ranked(order: np.ndarray) -> list[Candidate]:
            return [Candidate(int(j), float(scores[j])) for j in order if np.isfinite(scores[j])]

        head = best[np.argsort(-scores[best], kind="stable")]
        picked = select_negatives(ranked(head), self.params, positive_score=positive)
        if len(picked) < self.params.k and len(head) < len(scores):
            # The filters dropped most of the head: look further down the full ranking.
            full = np.argsort(-scores, kind="stable")
            picked = select_negatives(ranked(full), self.params, positive_score=positive)
        return picked

    # -- placement ----------------------------------------------------------------------------

    def batch(self, pool: Sequence[Pair], size: int, rng: random.Random) -> list[Pair]:
        """A batch of `size` pairs of one kind: random until mining has started; then, with the
        "batch" placement, seeds plus the pairs of their mined negatives."""
        size = min(size, len(pool))
        if not self.active or self.cfg.placement != "batch":
            return rng.sample(pool, size)
        seeds = rng.sample(pool, max(1, size // (1 + self.cfg.k)))
        batch = list(seeds)
        taken = {id(p) for p in batch}
        for p in seeds:
            for key in self.negatives.get((p.a.key, p.b.modality), []):
                options = [q for q in self.by_b.get((p.kind, key), []) if id(q) not in taken]
                if options and len(batch) < size:
                    q = rng.choice(options)
                    batch.append(q)
                    taken.add(id(q))
        if len(batch) < size:  # filters or shared negatives left room: fill at random
            rest = [q for q in pool if id(q) not in taken]
            batch += rng.sample(rest, size - len(batch))
        return batch

    def appended(self, batch: Sequence[Pair]) -> tuple[list[ItemRef], torch.Tensor]:
        """With the "append" placement: the mined b items of a batch's anchors and, for each,
        the row of its anchor (empty otherwise)."""
        refs: list[ItemRef] = []
        owners: list[int] = []
        if self.cfg.placement == "append":
            for r, p in enumerate(batch):
                for key in self.negatives.get((p.a.key, p.b.modality), []):
                    refs.append(self.refs[key])
                    owners.append(r)
        return refs, torch.tensor(owners, dtype=torch.long)

    def decoded(self, refs: Sequence[ItemRef]) -> list[Decoded]:
        return [self.cache.get(r) for r in refs]
