"""Training configuration: a JSON file, then command-line overrides, into one frozen dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

TOWERS = ("image", "text", "audio")


class ConfigError(ValueError):
    """The training configuration is invalid; raised before any training starts."""


PLACEMENTS = ("batch", "append")


@dataclass(frozen=True)
class MiningCfg:
    """Negatives mined against a bank of every item's vector, re-mined every N steps
    (see trainer.mining for the placements and the schedule)."""

    enabled: bool = False
    k: int = 2  # mined negatives per anchor
    refresh_every: int = 100  # steps between re-minings
    # "batch": mined negatives join the batch with their own pairs (no extra forward pass);
    # "append": extra candidates for their anchor only (one forward pass each).
    placement: str = "append"
    start_after: float = 0.0  # share of the run (steps or time budget) trained on random batches first
    initial_embed: bool = True  # embed every item when mining starts (else: only those trained on)
    reembed_every: int = 0  # full re-embedding every N re-minings; 0: never again
    # False-negative filters: candidates in the anchor's group, near-duplicates of the anchor,
    # or scoring above this fraction of the positive's score (None: no such ceiling, for data
    # whose groups are trusted labels) are not used as negatives.
    max_fraction_of_positive: float | None = 0.95
    near_duplicate: float = 0.98

    def validate(self) -> None:
        if not self.enabled:
            return
        m = self.max_fraction_of_positive
        if m is not None and not 0 < m <= 1:
            raise ConfigError("mining.max_fraction_of_positive must be in (0, 1] or null")
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"mining.placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.k < 1 or self.refresh_every < 1 or self.reembed_every < 0:
            raise ConfigError(
                "mining.k and mining.refresh_every must be at least 1, mining.reembed_every at least 0"
            )
        if not 0 <= self.start_after < 1:
            raise ConfigError("mining.start_after must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    base_bundle: str = "tiny"
    train: tuple[str, ...] = TOWERS  # towers whose weights learn
    freeze: tuple[str, ...] = ()  # towers kept as they are
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    grad_accum: int = 1
    seed: int = 0
    hardness_beta: float = 0.0  # in-batch hardness weighting of negatives; 0 turns it off
    augment: bool = True  # random shifts and zoom-outs of images and video frames
    mining: MiningCfg = field(default_factory=MiningCfg)
    checkpoint_every: int = 200
    max_minutes: float | None = None  # stop (and save) when this much training time has passed
    # How that time is counted: "wall" clock, or "cpu" seconds of the training process (what a
    # run got of a shared machine; equal budgets then mean equal compute under contention).
    budget_clock: str = "wall"
    log_every: int = 20
    device: str | None = None
    max_errors: int = 100  # bad manifest lines tolerated before the run stops
    audio_tower: dict[str, Any] | None = None  # config of a new audio tower, when the base bundle has none

    def validate(self) -> TrainConfig:
        unknown = [t for t in (*self.train, *self.freeze) if t not in TOWERS]
        if unknown:
            raise ConfigError(f"unknown tower(s) {unknown}: towers are {', '.join(TOWERS)}")
        both = sorted(set(self.train) & set(self.freeze))
        if both:
            raise ConfigError(f"the config asks to train tower(s) {both} that it also freezes")
        if not self.train:
            raise ConfigError("no tower to train: 'train' is empty")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2: a contrastive batch needs negatives")
        if self.budget_clock not in ("wall", "cpu"):
            raise ConfigError(f"budget_clock must be 'wall' or 'cpu', got {self.budget_clock!r}")
        if not self.lr > 0:
            raise ConfigError("lr must be positive")
        self.mining.validate()
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def packaged_config(name: str) -> Traversable:
    """A config shipped inside the package (trainer/configs/NAME), read through importlib.resources
    so it works from a wheel or a zip as well as from the checkout."""
    return resources.files("trainer") / "configs" / name


def load_config(
    path: str | Path | Traversable | None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the JSON file, then `overrides` (None values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            source = path if isinstance(path, Traversable) else Path(path)
            data = json.loads(source.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(known))}")
    mining = data.pop("mining", {})
    if isinstance(mining, MiningCfg):
        mining_cfg = mining
    else:
        bad = sorted(set(mining) - {f.name for f in fields(MiningCfg)})
        if bad:
            raise ConfigError(f"unknown mining key(s) {bad}")
        mining_cfg = MiningCfg(**mining)
    for key in ("train", "freeze"):
        if key in data:
            data[key] = tuple(data[key])
    return replace(TrainConfig(mining=mining_cfg), **data).validate()
