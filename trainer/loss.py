"""Symmetric InfoNCE for pairs across modalities, with the two hard-negative options.

open_clip's ClipLoss computes the plain symmetric loss; this one adds what ClipLoss has no hook
for: masking same-group items (class-level pairs make them false negatives), in-batch hardness
weighting, and extra mined negatives appended to the candidate set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: list[str],
    *,
    hardness_beta: float = 0.0,
    mined_b: torch.Tensor | None = None,
    mined_owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """a, b: (n, d) unit vectors, row i of a paired with row i of b.

    - Off-diagonal pairs in the same group are not negatives: they are masked out.
    - `hardness_beta` > 0 up-weights negatives by exp(beta * similarity) (Robinson et al., 2021),
      implemented as a detached shift of the negative logits.
    - `mined_b` (m, d) are extra negatives for the a -> b direction; `mined_owner` (m,) says which
      anchor row each belongs to (a mined negative only competes for its own anchor).
    """
    n = a.shape[0]
    device = a.device
    index = {x: i for i, x in enumerate(dict.fromkeys(groups))}
    g = torch.tensor([index[x] for x in groups], device=device)
    same = g[:, None] == g[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=device)
    blocked = same & ~eye
    sims = a @ b.T
    logits = logit_scale * sims
    if hardness_beta > 0:
        logits = logits + torch.where(eye, 0.0, hardness_beta * sims.detach())
    logits = logits.masked_fill(blocked, float("-inf"))
    target = torch.arange(n, device=device)

    logits_ab = logits
    if mined_b is not None and mined_owner is not None and len(mined_b):
        extra = logit_scale * (a @ mined_b.T)  # (n, m)
        if hardness_beta > 0:
            extra = extra + hardness_beta * (a @ mined_b.T).detach()
        own = mined_owner[None, :] == torch.arange(n, device=device)[:, None]
        logits_ab = torch.cat([logits, extra.masked_fill(~own, float("-inf"))], dim=1)
    return (F.cross_entropy(logits_ab, target) + F.cross_entropy(logits.T, target)) / 2
