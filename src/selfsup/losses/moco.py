"""InfoNCE for MoCo-SimCLR: a queue of keys (MoCo, He et al., 2020) or in-batch negatives (SimCLR).

Queries q (from the online network) and keys k (from the EMA key encoder, or the online network
itself) of two views a and b are L2-normalised. The rows are the 2n queries u = [q_a; q_b], each
with the positive key of the other view of its image, p = [k_b; k_a], and temperature t:

* queue of K keys w_1..w_K (negatives, no gradient):

      loss = mean_i [ -u_i . p_i / t + log( exp(u_i . p_i / t) + sum_j exp(u_i . w_j / t) ) ]

* no queue (``queue`` None or empty): in-batch negatives, the columns are all 2N keys
  c = [k_a; k_b] (gathered over devices with ``gather_distributed``) except the row's own key:

      loss = mean_i [ -u_i . p_i / t + log sum_{j != self(i)} exp(u_i . c_j / t) ]

  With k = q (keys from the online network) this is exactly SimCLR's NT-Xent loss.

Both split into ``alignment = mean_i -u_i . p_i / t`` and ``uniformity`` (the log-sum-exp term),
``loss = alignment + uniformity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.losses.distributed import check_views, gather_with_grad, rank, world_size


def moco_loss(
    q_a: Tensor,
    q_b: Tensor,
    k_a: Tensor,
    k_b: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.1,
    gather_distributed: bool = False,
) -> dict[str, Tensor]:
    """Symmetric InfoNCE (see module doc); returns ``{"loss", "alignment", "uniformity"}``."""
    if temperature <= 0:
        raise ConfigError(
            f"The MoCo temperature must be positive, got {temperature}. Typical values are 0.1 "
            "to 0.2."
        )
    check_views(q_a, q_b, "MoCo InfoNCE loss", min_batch=1)
    check_views(k_a, k_b, "MoCo InfoNCE loss", min_batch=1)
    n = q_a.shape[0]
    rows = F.normalize(torch.cat([q_a, q_b]), dim=1)
    keys_a, keys_b = F.normalize(k_a, dim=1), F.normalize(k_b, dim=1)
    positives = torch.cat([keys_b, keys_a])
    pos_logit = (rows * positives).sum(dim=1) / temperature  # (2n,)
    if queue is not None and queue.numel() > 0:
        negatives = F.normalize(queue.detach(), dim=1)
        neg_logits = rows @ negatives.T / temperature  # (2n, K)
        uniformity = torch.logsumexp(torch.cat([pos_logit[:, None], neg_logits], 1), 1).mean()
    else:
        if gather_distributed and world_size() > 1:
            all_a, all_b = gather_with_grad(keys_a), gather_with_grad(keys_b)
            offset = rank() * n
        else:
            all_a, all_b, offset = keys_a, keys_b, 0
        big_n = all_a.shape[0]
        logits = rows @ torch.cat([all_a, all_b]).T / temperature  # (2n, 2N)
        local = torch.arange(n, device=rows.device) + offset
        own = torch.cat([local, local + big_n])
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[torch.arange(2 * n, device=rows.device), own] = True
        uniformity = torch.logsumexp(logits.masked_fill(mask, float("-inf")), 1).mean()
    alignment = -pos_logit.mean()
    return {"loss": alignment + uniformity, "alignment": alignment, "uniformity": uniformity}


class MoCoLoss(nn.Module):
    """Module form of :func:`moco_loss`: ``forward(q_a, q_b, k_a, k_b, queue=None)``."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, q_a: Tensor, q_b: Tensor, k_a: Tensor, k_b: Tensor,
                queue: Tensor | None = None) -> dict[str, Tensor]:
        """Return ``{"loss": alignment + uniformity, "alignment", "uniformity"}``."""
        return moco_loss(q_a, q_b, k_a, k_b, queue, self.temperature, self.gather_distributed)
