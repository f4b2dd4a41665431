"""The trainer's miner on controlled vectors (bank, schedule, false-negative filters, placements),
and the time-budgeted schedule."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.modality import Modality
from trainer.config import ConfigError, MiningCfg, load_config
from trainer.data import ItemCache
from trainer.manifest import ItemRef, Pair
from trainer.mining import IndexMiner
from trainer.towers import Towers
from trainer.train import _lr_factor, _progress

GROUPS = ("a", "a2", "b", "c", "d", "e")  # "a2" is a's one confuser: its vectors sit next to a's


def _pairs() -> list[Pair]:
    pairs = []
    for g in GROUPS:
        for i in range(3):
            image = ItemRef(Modality.IMAGE, path=Path(f"/nowhere/{g}_{i}.png"))
            pairs.append(Pair(image, ItemRef(Modality.TEXT, text=f"caption of {g} {i}"), g, len(pairs) + 1))
    return pairs


def _vectors(pairs: list[Pair], side: str) -> torch.Tensor:
    """Every group on its own axis, except a2, which leans on a's."""
    rng = np.random.default_rng(0 if side == "a" else 1)
    out = []
    for p in pairs:
        v = np.zeros(8)
        v[GROUPS.index(p.group)] = 1.0
        if p.group == "a2":
            v[GROUPS.index("a")] = 0.9
        v += 0.05 * rng.normal(size=8)
        out.append(v / np.linalg.norm(v))
    return torch.tensor(np.array(out), dtype=torch.float32)


def _miner(pairs: list[Pair], **cfg: object) -> IndexMiner:
    config = MiningCfg(enabled=True, initial_embed=False, max_fraction_of_positive=None, **cfg)  # type: ignore[arg-type]
    # No tower is run: the bank is filled by `observe`, as training steps do.
    return IndexMiner(config, Towers.__new__(Towers), ItemCache.__new__(ItemCache), pairs)


def test_the_bank_fed_by_training_steps_gives_each_anchor_its_confusers() -> None:
    pairs = _pairs()
    miner = _miner(pairs, k=2, refresh_every=5, start_after=0.25)
    miner.step(0, 0.1)
    assert not miner.active  # random batches first
    miner.observe([p.a for p in pairs], _vectors(pairs, "a"))
    miner.observe([p.b for p in pairs[:-3]], _vectors(pairs, "b")[:-3])  # group e's texts unseen
    miner.step(3, 0.3)
    assert miner.active and miner.refreshes == 0 and miner.reminings == 1
    for p in pairs:
        negatives = miner.negatives.get((p.a.key, Modality.TEXT), [])
        groups = {miner.group[k] for k in negatives}
        if p.group == "e":
            assert not negatives  # its positive has no vector yet
            continue
        assert len(negatives) == 2 and p.group not in groups and "e" not in groups
        if p.group == "a":
            assert groups == {"a2"}  # the confuser, never the anchor's own group
    miner.step(4, 0.4)
    assert miner.reminings == 1  # next re-mining 5 steps after the first
    miner.step(8, 0.5)
    assert miner.reminings == 2


def test_batch_placement_brings_the_confusers_pairs_into_the_batch() -> None:
    pairs = _pairs()
    miner = _miner(pairs, k=2, placement="batch")
    rng = random.Random(0)
    plain = miner.batch(pairs, 6, rng)
    assert len(plain) == 6  # not started: a random batch
    miner.observe([p.a for p in pairs], _vectors(pairs, "a"))
    miner.observe([p.b for p in pairs], _vectors(pairs, "b"))
    miner.step(0, 0.0)
    for _ in range(10):
        batch = miner.batch(pairs, 6, rng)
        assert len(batch) == 6 and len({id(p) for p in batch}) == 6
        # Two seeds, then for each the pairs holding its two mined negatives (their b items).
        for seed in batch[:2]:
            mined = miner.negatives[(seed.a.key, Modality.TEXT)]
            assert len(mined) == 2 and set(mined) <= {p.b.key for p in batch}
            assert seed.group not in {miner.group[k] for k in mined}
    assert miner.appended(batch)[0] == []  # nothing appended in this placement


def test_append_placement_lists_each_anchors_negatives() -> None:
    pairs = _pairs()
    miner = _miner(pairs, k=2, placement="append")
    miner.observe([p.a for p in pairs], _vectors(pairs, "a"))
    miner.observe([p.b for p in pairs], _vectors(pairs, "b"))
    miner.step(0, 0.0)
    batch = [pairs[0], pairs[6]]
    refs, owners = miner.appended(batch)
    assert len(refs) == 4 and owners.tolist() == [0, 0, 1, 1]
    assert all(miner.group[r.key] != batch[o].group for r, o in zip(refs, owners.tolist(), strict=True))


def test_score_ceiling_drops_candidates_close_to_the_positive() -> None:
    pairs = _pairs()
    miner = _miner(pairs, k=2)
    ceiling = IndexMiner(
        MiningCfg(enabled=True, initial_embed=False, k=2, max_fraction_of_positive=0.5),
        Towers.__new__(Towers),
        ItemCache.__new__(ItemCache),
        pairs,
    )
    for m in (miner, ceiling):
        m.observe([p.a for p in pairs], _vectors(pairs, "a"))
        m.observe([p.b for p in pairs], _vectors(pairs, "b"))
        m.step(0, 0.0)
    key = (pairs[0].a.key, Modality.TEXT)
    assert {miner.group[k] for k in miner.negatives[key]} == {"a2"}
    # a2 scores ~0.7 against a's anchor, above half the positive's ~1: filtered as a likely false negative.
    assert "a2" not in {ceiling.group[k] for k in ceiling.negatives[key]}


def test_time_budget_drives_the_schedule() -> None:
    cfg = load_config(None, {"steps": 1000, "warmup_steps": 10, "max_minutes": 1.0})
    assert _progress(cfg, 100, 30.0) == pytest.approx(0.5)  # time is ahead of steps
    assert _progress(cfg, 900, 30.0) == pytest.approx(0.9)  # steps are ahead of time
    assert _lr_factor(cfg, 5, 0.0) == pytest.approx(0.6)  # warming up
    assert _lr_factor(cfg, 500, 1.0) == pytest.approx(0.0)  # annealed when the budget is spent
    untimed = load_config(None, {"steps": 1000, "warmup_steps": 10})
    assert _progress(untimed, 100, 1e6) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget_clock": "sundial"}, "budget_clock"),
        ({"mining": {"enabled": True, "placement": "everywhere"}}, "placement"),
        ({"mining": {"enabled": True, "start_after": 1.0}}, "start_after"),
        ({"mining": {"enabled": True, "max_fraction_of_positive": 1.5}}, "max_fraction_of_positive"),
    ],
)
def test_bad_mining_and_budget_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
