"""The training loop: contrastive fine-tuning of a bundle's towers on manifest pairs."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.audio import AudioTower, AudioTowerCfg
from encoders.bundle import ModelBundle, load_bundle, save_bundle
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from trainer import distributed
from trainer.config import ConfigError, TrainConfig
from trainer.data import ItemCache
from trainer.distributed import Dist, StepModule
from trainer.loss import GroupClipLoss, group_ids
from trainer.manifest import ItemRef, Pair, load_manifest
from trainer.mining import IndexMiner
from trainer.towers import Towers

CHECKPOINTS = "checkpoints"
Log = Callable[[str], None]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    seconds: float
    pairs_per_second: float
    first_loss: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # manifest lines not used, with reasons
    stopped_early: bool = False
    mining_seconds: float = 0.0  # spent re-embedding and re-mining, inside `seconds`
    cpu_seconds: float = 0.0  # CPU time of the training process over the loop


def _prepare_bundle(config: TrainConfig) -> ModelBundle:
    bundle = load_bundle(config.base_bundle, config.device)
    if bundle.audio is None and ("audio" in config.train or config.audio_tower):
        if not config.audio_tower:
            raise ConfigError(
                f"bundle {config.base_bundle} has no audio tower to train: give 'audio_tower' "
                '(e.g. {"arch": "conv1d-mel"}) to bind a new one to its space'
            )
        cfg = AudioTowerCfg.from_dict(config.audio_tower, embed_dim=bundle.embed_dim)
        torch.manual_seed(config.seed)
        bundle.audio = AudioTower(cfg).to(bundle.device)
    return bundle


def _check_towers(config: TrainConfig, bundle: ModelBundle, pairs: list[Pair]) -> None:
    needed = {m for p in pairs for m in p.kind}
    if Modality.AUDIO in needed and bundle.audio is None:
        raise ConfigError(
            "the manifest has audio pairs but the bundle has no audio tower (set 'audio_tower')"
        )
    towers_used = {"image" if m in (Modality.IMAGE, Modality.VIDEO) else m.value for m in needed}
    if not towers_used & set(config.train):
        raise ConfigError(f"none of the towers to train {list(config.train)} appears in the manifest's pairs")


def _set_trainable(towers: Towers, config: TrainConfig) -> list[torch.nn.Parameter]:
    model = towers.bundle.model
    for p in model.parameters():
        p.requires_grad_(False)
    if towers.bundle.audio is not None:
        for p in towers.bundle.audio.parameters():
            p.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for tower in config.train:
        for p in towers.parameters(tower):
            p.requires_grad_(True)
            params.append(p)
    logit_scale = model.logit_scale
    logit_scale.requires_grad_(True)
    return [*params, logit_scale]  # type: ignore[list-item]


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on gains, biases, embeddings' scale or the temperature: only on matrices.
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _progress(config: TrainConfig, step: int, seconds: float) -> float:
    """How far through the run: by steps, or by the time budget when that comes first, so a
    time-budgeted run anneals fully however many steps the machine manages."""
    by_steps = step / config.steps
    if config.max_minutes is None:
        return by_steps
    return min(1.0, max(by_steps, seconds / (config.max_minutes * 60)))


def _lr_factor(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over the first steps, then a cosine to zero over the rest of the run."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    warm = config.warmup_steps / config.steps
    rest = (progress - warm) / max(1e-9, 1 - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, rest))))


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def train(
    config: TrainConfig,
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    log: Log = print,
) -> TrainResult:
    """Train, checkpointing under out_dir/checkpoints, and write the bundle to out_dir.

    Every check (config, manifest, towers, checkpoint compatibility) runs before the first step.
    """
    out = Path(out_dir)
    # Under torchrun: this process's share of the run (trainer.distributed); else one process.
    world, device = distributed.init(config.device)
    finished = False
    try:
        result = _train(replace(config, device=device), out, manifest_path, world, resume, log)
        finished = True
        return result
    finally:
        distributed.close(world, finished=finished)


def _train(
    config: TrainConfig, out: Path, manifest_path: str | Path, world: Dist, resume: bool, log: Log
) -> TrainResult:
    if config.batch_size % world.world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} does not split over {world.world_size} processes: "
            f"give a multiple of {world.world_size} (it is the global batch)"
        )
    if not world.writer:
        log = _silent
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    bundle = _prepare_bundle(config)
    base_id = bundle.bundle_id
    manifest = load_manifest(manifest_path, max_errors=config.max_errors)
    _check_towers(config, bundle, manifest.pairs)
    checkpoint = _latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint under {out / CHECKPOINTS}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint else None
    if state is not None and state["base_bundle_id"] != base_id:
        raise ConfigError(
            f"checkpoint {checkpoint} was trained from bundle {state['base_bundle_id']}, "
            f"but the config's base bundle is {base_id}: resume with the same base_bundle"
        )

    embedder = Embedder(Encoder(bundle))
    cache = ItemCache(embedder)
    try:
        t0 = time.perf_counter()
        cache.load(r for p in manifest.pairs for r in (p.a, p.b))
        pairs = [p for p in manifest.pairs if p.a in cache and p.b in cache]
        skipped = list(manifest.errors)
        skipped += [
            f"{manifest.path.name} line {p.line}: {cache.failures.get(p.a.key) or cache.failures.get(p.b.key)}"
            for p in manifest.pairs
            if not (p.a in cache and p.b in cache)
        ]
        if len(skipped) > config.max_errors:
            raise ConfigError(
                f"{len(skipped)} unusable manifest lines, over the budget of {config.max_errors}"
            )
        log(f"loaded {len(pairs)} pairs in {time.perf_counter() - t0:.1f} s ({len(skipped)} lines skipped)")
        # Under torchrun the batches are drawn alike everywhere from `rng`; the draws for a
        # process's own share (audio crops) come from another generator, seeded alike everywhere
        # (equal shares keep it in step, so the miner's full re-embeddings agree too).
        towers = Towers(
            bundle, random.Random(config.seed + 1) if world.enabled else rng, augment=config.augment
        )
        miner = IndexMiner(config.mining, towers, cache, pairs) if config.mining.enabled else None
        loss = GroupClipLoss(hardness_beta=config.hardness_beta, **world.loss_args())
        run = _Run(config, towers, cache, loss, miner, base_id, out, rng, log, world)
        return run.loop(pairs, state, skipped)
    finally:
        embedder.close()


@dataclass
class _Run:
    """One training run's parts: the towers, the loss (open_clip's ClipLoss, extended) and the
    miner are built by `train` and handed in, so each can be swapped (or wrapped for
    data-parallel training) without touching the loop."""

    config: TrainConfig
    towers: Towers
    cache: ItemCache
    loss: GroupClipLoss
    miner: IndexMiner | None
    base_id: str
    out: Path
    rng: random.Random
    log: Log
    world: Dist = field(default_factory=Dist)

    def loop(self, pairs: list[Pair], state: dict[str, Any] | None, skipped: list[str]) -> TrainResult:
        config, bundle, rng = self.config, self.towers.bundle, self.rng
        params = _set_trainable(self.towers, config)
        optimizer = _optimizer(params, config)
        by_kind: dict[tuple[Modality, Modality], list[Pair]] = {}
        for p in pairs:
            by_kind.setdefault(p.kind, []).append(p)
        kinds = sorted(by_kind)
        # Kinds are drawn in proportion to the square root of their size: the big image-text set
        # gets most steps without starving the small video sets.
        weights = [math.sqrt(len(by_kind[k])) for k in kinds]
        step = 0
        losses: list[float] = []
        if state is not None:
            bundle.model.load_state_dict(state["model"])
            if bundle.audio is not None and state.get("audio") is not None:
                bundle.audio.load_state_dict(state["audio"])
            optimizer.load_state_dict(state["optimizer"])
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            step, losses = int(state["step"]), list(state["losses"])
            self.log(f"resumed from step {step}")

        modules = [m for m in (bundle.model, bundle.audio) if m is not None]
        for m in modules:
            m.train()
        self.forward: Callable[..., tuple[Any, ...]] = self._embed
        if self.world.enabled:
            self.forward = distributed.data_parallel(
                StepModule(self._embed, modules), self.world, bundle.device
            )
        clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
        cpu_start = time.process_time()
        start, budget_start, window_start = time.perf_counter(), clock(), time.perf_counter()
        seen, stopped, mining = 0, False, 0.0
        first_step = step
        while step < config.steps:
            spent = self.world.from_writer(clock() - budget_start, bundle.device)
            progress = _progress(config, step, spent)
            if self.miner is not None:
                t0 = time.perf_counter()
                self.miner.step(step - first_step, progress)
                mining += time.perf_counter() - t0
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(config, step, progress)
            kind = rng.choices(kinds, weights)[0]
            total = 0.0
            for _ in range(config.grad_accum):
                batch = self._batch(by_kind[kind])
                loss = self._loss(batch, kind)
                (loss / config.grad_accum).backward()
                total += self.world.mean(float(loss.detach()), bundle.device) / config.grad_accum
                seen += len(batch) * self.world.world_size
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(total)
            if step % config.log_every == 0 or step == config.steps:
                rate = seen / max(time.perf_counter() - window_start, 1e-9)
                recent = sum(losses[-config.log_every :]) / len(losses[-config.log_every :])
                lr = optimizer.param_groups[0]["lr"]
                self.log(f"step {step}/{config.steps}  loss {recent:.4f}  lr {lr:.2e}  pairs/s {rate:.0f}")
                seen, window_start = 0, time.perf_counter()
            if step % config.checkpoint_every == 0 and self.world.writer:
                self._save(step, optimizer, losses)
            spent = self.world.from_writer(clock() - budget_start, bundle.device)
            if config.max_minutes is not None and spent > config.max_minutes * 60:
                self.log(f"time budget of {config.max_minutes} min reached at step {step}")
                stopped = True
                break

        for m in modules:
            m.eval()
        if self.world.writer:
            self._save(step, optimizer, losses)
            save_bundle(bundle, self.out)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        return TrainResult(
            out_dir=self.out,
            steps=step,
            seconds=round(elapsed, 2),
            pairs_per_second=round(
                (step - first_step) * config.batch_size * config.grad_accum / max(elapsed, 1e-9), 1
            ),
            first_loss=losses[0] if losses else float("nan"),
            final_loss=float(np.mean(losses[-10:])) if losses else float("nan"),
            losses=losses,
            skipped=skipped,
            stopped_early=stopped,
            mining_seconds=round(mining, 2),
            cpu_seconds=round(cpu, 2),
        )

    def _batch(self, pool: list[Pair]) -> list[Pair]:
        """This process's share of the step's batch (all of it on one process)."""
        if self.miner is not None:
            return self.world.shard(self.miner.batch(pool, self.config.batch_size, self.rng))
        return self.world.shard(self.rng.sample(pool, min(self.config.batch_size, len(pool))))

    def _loss(self, batch: list[Pair], kind: tuple[Modality, Modality]) -> torch.Tensor:
        device = self.towers.bundle.device
        with _autocast(device):
            a, b, mined_b, owners, scale = self.forward(batch, kind)
            groups = group_ids([p.group for p in batch], device)
            return self.loss(a, b, scale, groups, mined_b, owners)

    def _embed(
        self, batch: list[Pair], kind: tuple[Modality, Modality]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """The step's forward: both sides, the mined negatives and the temperature (under
        torchrun it runs inside DistributedDataParallel, see trainer.distributed.StepModule)."""
        towers, device = self.towers, self.towers.bundle.device
        logit_scale: torch.nn.Parameter = towers.bundle.model.logit_scale  # type: ignore[assignment]
        a = towers.embed([self.cache.get(p.a) for p in batch], kind[0]).float()
        b = towers.embed([self.cache.get(p.b) for p in batch], kind[1]).float()
        mined_b, owners = None, None
        if self.miner is not None:
            # The step's own vectors keep the miner's bank fresh at no extra cost.
            self._observe([p.a for p in batch], a)
            self._observe([p.b for p in batch], b)
            refs, owners = self.miner.appended(batch)
            if refs:
                mined_b = towers.embed(self.miner.decoded(refs), kind[1]).float()
                owners = owners.to(device)
            self._observe(refs, mined_b)
        return a, b, mined_b, owners, logit_scale.exp().clamp(max=100)

    def _observe(self, refs: list[ItemRef], vectors: torch.Tensor | None) -> None:
        """Into the miner's bank; under torchrun every process's share, so that every process
        mines alike (and draws the same batches)."""
        assert self.miner is not None
        refs, vectors = self.world.gather_rows(refs, vectors)
        if refs and vectors is not None:
            self.miner.observe(refs, vectors)

    def _save(self, step: int, optimizer: torch.optim.Optimizer, losses: list[float]) -> Path:
        bundle = self.towers.bundle
        folder = self.out / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "model": bundle.model.state_dict(),
                "audio": bundle.audio.state_dict() if bundle.audio is not None else None,
                "optimizer": optimizer.state_dict(),
                "rng": self.rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "losses": losses,
                "base_bundle_id": self.base_id,
                "config": self.config.to_json(),
            },
            tmp,
        )
        tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint under the real name
        return path


def _silent(line: str) -> None:
    """The log of processes other than 0: process 0 reports for the run."""


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step_*.pt"))
    return found[-1] if found else None
