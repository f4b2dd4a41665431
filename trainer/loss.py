"""Symmetric InfoNCE for pairs across modalities: open_clip's ClipLoss, extended.

`GroupClipLoss` keeps ClipLoss's logits (and its feature gathering across ranks under torchrun)
and its labels, and adds what ClipLoss has no hook for:

- same-group masking: with class-level pairs, two rows of one group are not negatives of each
  other (a false negative would push apart what should meet);
- in-batch hardness weighting (Robinson et al., 2021): negatives up-weighted by exp(beta * sim);
- mined negatives appended to each anchor's candidates in the a -> b direction.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import distributed as dist


def group_ids(groups: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """Stable integer ids for group names: the same on every rank, so they can be gathered."""
    return torch.tensor([zlib.crc32(g.encode("utf-8")) for g in groups], dtype=torch.long, device=device)


class GroupClipLoss(ClipLoss):
    def __init__(self, *, hardness_beta: float = 0.0, **clip_loss_args: object) -> None:
        super().__init__(**clip_loss_args)
        self.hardness_beta = hardness_beta

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        logit_scale: torch.Tensor,
        groups: torch.Tensor,
        mined_b: torch.Tensor | None = None,
        mined_owner: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """a, b: (n, d) unit vectors, row i of a paired with row i of b; `groups` (n,) from
        :func:`group_ids`. `mined_b` (m, d) are extra negatives for the a -> b direction and
        `mined_owner` (m,) the local row of the anchor each belongs to."""
        logits_ab, logits_ba = self.get_logits(a, b, logit_scale)
        labels = self.get_ground_truth(a.device, logits_ab.shape[0])
        everyone = self._gather(groups)
        # Rows are this rank's pairs under local_loss (or on one device), every rank's otherwise.
        rows = groups if logits_ab.shape[0] == len(groups) else everyone
        logits_ab = self._mask(logits_ab, logit_scale, rows, everyone, labels)
        logits_ba = self._mask(logits_ba, logit_scale, rows, everyone, labels)
        if mined_b is not None and mined_owner is not None and len(mined_b):
            logits_ab = torch.cat([logits_ab, self._mined(a, mined_b, mined_owner, logit_scale, rows)], 1)
        return (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels)) / 2

    def _gather(self, groups: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return groups
        parts = [torch.zeros_like(groups) for _ in range(self.world_size)]
        dist.all_gather(parts, groups)
        return torch.cat(parts)

    def _mask(
        self,
        logits: torch.Tensor,
        scale: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[torch.arange(len(labels), device=logits.device), labels] = True
        if self.hardness_beta > 0:
            # A detached shift: each negative's weight in the softmax grows by exp(beta * sim).
            shift = self.hardness_beta * (logits.detach() / scale.detach())
            logits = logits + torch.where(positive, 0.0, shift)
        blocked = (rows[:, None] == cols[None, :]) & ~positive
        return logits.masked_fill(blocked, float("-inf"))

    def _mined(
        self,
        a: torch.Tensor,
        mined_b: torch.Tensor,
        owner: torch.Tensor,
        scale: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        sims = a @ mined_b.T  # (n_local, m)
        extra = scale * sims
        if self.hardness_beta > 0:
            extra = extra + self.hardness_beta * sims.detach()
        own = owner[None, :] == torch.arange(len(a), device=a.device)[:, None]
        extra = extra.masked_fill(~own, float("-inf"))
        if len(rows) == len(a):
            return extra
        # Every rank's rows: this rank's anchors sit at rank * n; other ranks' rows get no extra.
        full = extra.new_full((len(rows), extra.shape[1]), float("-inf"))
        start = self.rank * len(a)
        full[start : start + len(a)] = extra
        return full
