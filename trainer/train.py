"""The training loop: contrastive fine-tuning of a bundle's towers on manifest pairs."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.audio import AudioTower, AudioTowerCfg
from encoders.bundle import ModelBundle, load_bundle, save_bundle
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from trainer.config import ConfigError, TrainConfig
from trainer.data import ItemCache
from trainer.loss import contrastive_loss
from trainer.manifest import Pair, load_manifest
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


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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
        return _loop(config, bundle, base_id, pairs, cache, out, state, skipped, rng, log)
    finally:
        embedder.close()


def _loop(
    config: TrainConfig,
    bundle: ModelBundle,
    base_id: str,
    pairs: list[Pair],
    cache: ItemCache,
    out: Path,
    state: dict[str, Any] | None,
    skipped: list[str],
    rng: random.Random,
    log: Log,
) -> TrainResult:
    towers = Towers(bundle, rng, augment=config.augment)
    params = _set_trainable(towers, config)
    optimizer = _optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    by_kind: dict[tuple[Modality, Modality], list[Pair]] = {}
    for p in pairs:
        by_kind.setdefault(p.kind, []).append(p)
    kinds = sorted(by_kind)
    # Kinds are drawn in proportion to the square root of their size: the big image-text set gets
    # most steps without starving the small video sets.
    weights = [math.sqrt(len(by_kind[k])) for k in kinds]
    miner = IndexMiner(config.mining, towers, cache, pairs) if config.mining.enabled else None
    step = 0
    losses: list[float] = []
    if state is not None:
        bundle.model.load_state_dict(state["model"])
        if bundle.audio is not None and state.get("audio") is not None:
            bundle.audio.load_state_dict(state["audio"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, losses = int(state["step"]), list(state["losses"])
        log(f"resumed from step {step}")

    modules = [m for m in (bundle.model, bundle.audio) if m is not None]
    for m in modules:
        m.train()
    logit_scale: torch.nn.Parameter = bundle.model.logit_scale  # type: ignore[assignment]
    start, seen, window_start, stopped = time.perf_counter(), 0, time.perf_counter(), False
    first_step = step
    while step < config.steps:
        if miner is not None and (step - first_step) % config.mining.refresh_every == 0:
            miner.refresh()
        kind = rng.choices(kinds, weights)[0]
        total = 0.0
        for _ in range(config.grad_accum):
            batch = rng.sample(by_kind[kind], min(config.batch_size, len(by_kind[kind])))
            with _autocast(bundle.device):
                a = towers.embed([cache.get(p.a) for p in batch], kind[0])
                b = towers.embed([cache.get(p.b) for p in batch], kind[1])
                mined_b, owners = None, None
                if miner is not None:
                    items, owners = miner.for_batch(batch)
                    if items:
                        mined_b = towers.embed(items, kind[1])
                        owners = owners.to(bundle.device)
                loss = contrastive_loss(
                    a.float(),
                    b.float(),
                    logit_scale.exp().clamp(max=100),
                    [p.group for p in batch],
                    hardness_beta=config.hardness_beta,
                    mined_b=mined_b.float() if mined_b is not None else None,
                    mined_owner=owners,
                )
            (loss / config.grad_accum).backward()
            total += float(loss.detach()) / config.grad_accum
            seen += len(batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(total)
        if step % config.log_every == 0 or step == config.steps:
            rate = seen / max(time.perf_counter() - window_start, 1e-9)
            recent = sum(losses[-config.log_every :]) / len(losses[-config.log_every :])
            log(
                f"step {step}/{config.steps}  loss {recent:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  pairs/s {rate:.0f}"
            )
            seen, window_start = 0, time.perf_counter()
        if step % config.checkpoint_every == 0:
            _save_checkpoint(out, step, bundle, optimizer, scheduler, rng, losses, base_id, config)
        if config.max_minutes is not None and time.perf_counter() - start > config.max_minutes * 60:
            log(f"time budget of {config.max_minutes} min reached at step {step}")
            stopped = True
            break

    for m in modules:
        m.eval()
    _save_checkpoint(out, step, bundle, optimizer, scheduler, rng, losses, base_id, config)
    save_bundle(bundle, out)
    elapsed = time.perf_counter() - start
    return TrainResult(
        out_dir=out,
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
    )


def _save_checkpoint(
    out: Path,
    step: int,
    bundle: ModelBundle,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: random.Random,
    losses: list[float],
    base_id: str,
    config: TrainConfig,
) -> Path:
    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "model": bundle.model.state_dict(),
            "audio": bundle.audio.state_dict() if bundle.audio is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "losses": losses,
            "base_bundle_id": base_id,
            "config": config.to_json(),
        },
        tmp,
    )
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint under the real name
    return path


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step_*.pt"))
    return found[-1] if found else None
