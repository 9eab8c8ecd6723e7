"""SimCLR NT-Xent loss (Chen et al., 2020).

With L2-normalised embeddings, ``2n`` local rows ``u_i`` (both views) and the ``2N`` columns ``v_j``
of the (gathered, if ``gather_distributed``) batch, ``N = world_size * n``:

    loss = mean_i [ -u_i . v_pos(i) / t + log sum_{j != self(i)} exp(u_i . v_j / t) ],

where ``pos(i)`` is the other view of the same image and the sum runs over the positive and the
``2N - 2`` negatives (all columns but the row itself). It splits exactly into two named terms,
``alignment = mean_i -u_i . v_pos(i) / t`` and ``uniformity = mean_i logsumexp_{j != self(i)}``.

Default temperature 0.1 (solo-learn's CIFAR/ImageNet-100 setting; the SimCLR paper uses 0.5 for
CIFAR-10 and 0.1 for large-batch ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.losses.distributed import check_views, gather_with_grad, rank, world_size


def nt_xent_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    temperature: float = 0.1,
    gather_distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """NT-Xent loss; returns ``{"loss", "alignment", "uniformity"}`` with loss = sum of the two."""
    if temperature <= 0:
        raise ConfigError(
            f"The SimCLR temperature must be positive, got {temperature}. Typical values are "
            "0.1 to 0.5."
        )
    check_views(z_a, z_b, "SimCLR NT-Xent loss", min_batch=1)
    n = z_a.shape[0]
    z_a = F.normalize(z_a, dim=1)
    z_b = F.normalize(z_b, dim=1)
    if gather_distributed and world_size() > 1:
        all_a, all_b = gather_with_grad(z_a), gather_with_grad(z_b)
        offset = rank() * n
    else:
        all_a, all_b = z_a, z_b
        offset = 0
    big_n = all_a.shape[0]
    rows = torch.cat([z_a, z_b], dim=0)  # (2n, d)
    cols = torch.cat([all_a, all_b], dim=0)  # (2N, d)
    logits = rows @ cols.T / temperature  # (2n, 2N)
    local = torch.arange(n, device=z_a.device) + offset
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    row_idx = torch.arange(2 * n, device=z_a.device)
    positive = logits[row_idx, pos_idx]
    masked = logits.index_put((row_idx, self_idx), logits.new_full((), float("-inf")))
    alignment = -positive.mean()
    uniformity = torch.logsumexp(masked, dim=1).mean()
    return {"loss": alignment + uniformity, "alignment": alignment, "uniformity": uniformity}


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss` (temperature 0.1 by default)."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": alignment + uniformity, "alignment", "uniformity"}``."""
        return nt_xent_loss(z_a, z_b, self.temperature, self.gather_distributed)
