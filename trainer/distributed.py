"""Data-parallel training under torchrun: one process per device, the global batch shared out.

    torchrun --nproc-per-node N -m mmsearch train --data DIR --out BUNDLE ...

- The process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, the
  rendezvous): NCCL on GPUs, one per process; gloo on CPUs. Without torchrun, nothing changes.
- Every process draws the same global batch of `batch_size` pairs (same seed, same sampling
  generator) and trains on its contiguous share of it: DistributedSampler's split, for batches
  drawn per step.
- The loss is trainer.loss.GroupClipLoss (open_clip's ClipLoss) with open_clip's gather: each
  process's rows against every process's columns, gradients flowing back through the gather
  (`local_loss`, `gather_with_grad`), so the gradient is the global batch's, exactly as on one
  process. DistributedDataParallel averages the gradients (StepModule gives it a forward).
- Process 0 alone writes checkpoints and the bundle. A checkpoint holds the plain model and
  optimizer state, the same on every process, so a run resumes under any number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import distributed as dist

T = TypeVar("T")
# How long a process waits for the others at a collective before the run fails.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """The one process that writes checkpoints, the bundle and the log."""
        return self.rank == 0

    def loss_args(self) -> dict[str, Any]:
        """ClipLoss's arguments for this run: open_clip's gather with gradients."""
        if not self.enabled:
            return {}
        return {
            "local_loss": True,
            "gather_with_grad": True,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This process's contiguous share of the global batch. A batch that does not split
        evenly (a pool smaller than the batch size) is padded with its first items, as
        DistributedSampler pads: the gather needs equal shares, and a repeated pair is in its
        own group, so the loss does not take it for a negative."""
        if not self.enabled:
            return list(batch)
        n = -(-len(batch) // self.world_size)
        padded = [batch[i % len(batch)] for i in range(n * self.world_size)]
        return padded[self.rank * n : (self.rank + 1) * n]

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a number over the processes (a loss: each holds its rows' share)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def gather_rows(
        self, items: Sequence[T], rows: torch.Tensor | None
    ) -> tuple[list[T], torch.Tensor | None]:
        """Every process's `items` and their `rows` (no gradient), in rank order. Shares may
        differ in length (or be empty: `rows` None); every process must call this alike."""
        if not self.enabled:
            return list(items), rows
        shares: list[Any] = [None] * self.world_size
        meta = None if rows is None else (tuple(rows.shape[1:]), rows.dtype)
        dist.all_gather_object(shares, (list(items), meta))
        out_items: list[T] = [x for share, _ in shares for x in share]
        meta = next((m for _, m in shares if m is not None), None)
        if meta is None:
            return out_items, None
        shape, dtype = meta
        counts = [len(share) for share, _ in shares]
        # NCCL gathers device tensors, gloo host ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        padded = torch.zeros((max(counts), *shape), dtype=dtype, device=device)
        if rows is not None:
            padded[: len(rows)] = rows.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return out_items, torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    def from_writer(self, value: float, device: torch.device) -> float:
        """Process 0's `value` on every process: what must agree everywhere (the time spent,
        which sets the learning rate and the stop of a time-budgeted run)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return float(t.item())


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init(device: str | None) -> tuple[Dist, str | None]:
    """Join torchrun's process group when launched by it; returns this process's place and the
    device it trains on (its own GPU under NCCL; `device` otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise ValueError(
                f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} visible; "
                "start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Dist(rank, world_size, local_rank), device


def close(d: Dist, *, finished: bool) -> None:
    """Leave the process group; after a finished run, once process 0 has written the bundle."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


class StepModule(torch.nn.Module):
    """A training step's forward as one module call, for DistributedDataParallel: it syncs the
    gradients of the parameters a forward used. The forward itself is the trainer's own
    (`fn`); `parts` are the modules whose parameters it uses. `fn` returns the temperature too,
    so that parameter, like the others, is reached from the forward's outputs."""

    def __init__(self, fn: Callable[..., tuple[Any, ...]], parts: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.fn = fn
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, *args: Any) -> tuple[Any, ...]:
        return self.fn(*args)


def data_parallel(module: StepModule, d: Dist, device: torch.device) -> torch.nn.Module:
    """`module` under DistributedDataParallel (every process's gradients averaged)."""
    from torch.nn.parallel import DistributedDataParallel

    # Each step trains one pair kind: the towers of the others are unused in it.
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )
