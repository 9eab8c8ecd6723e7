"""SimCLR's NT-Xent loss (Chen et al., 2020) and the InfoNCE it generalises (one implementation).

:func:`info_nce`: queries ``q_a, q_b`` (n each, with gradient) and keys ``k_a, k_b`` of the same
n images, all L2-normalised. For the query ``u = q_v[i]`` of view v (the other view is w) the
positive is the key of the other view of its image, ``k_w[i]``, and the candidates are the other
queries of its own view, every key of the other view and an optional queue of extra negatives
``w_1..w_K`` (no gradient):

    loss_i = -u . k_w[i] / t
             + log( sum_{j != i} exp(u . q_v[j] / t) + sum_j exp(u . k_w[j] / t)
                    + sum_m exp(u . w_m / t) ),

averaged over the 2n queries of both views. With ``gather_distributed`` the in-batch columns
``q_v[j]``, ``k_w[j]`` run over the global batch of N = world_size * n images (gathered with
gradients). It splits exactly into ``alignment = mean_i -u . k_w[i] / t`` and ``uniformity`` (the
log-sum-exp term), ``loss = alignment + uniformity``.

:func:`nt_xent_loss` is the case k = q without a queue: the candidates of a row are the other
``2N - 1`` views of the batch (the positive and the ``2N - 2`` negatives), i.e.

    loss = mean_i [ -u_i . v_pos(i) / t + log sum_{j != self(i)} exp(u_i . v_j / t) ].

MoCo-SimCLR (:mod:`selfsup.losses.moco`) is :func:`info_nce` with EMA keys and a queue.

Default temperature 0.1 (solo-learn's CIFAR/ImageNet-100 setting; the SimCLR paper uses 0.5 for
CIFAR-10 and 0.1 for large-batch ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.losses.distributed import check_views, gather_with_grad, rank, world_size


def _direction(rows: Tensor, same: Tensor, other: Tensor, queue: Tensor | None, offset: int,
               temperature: float) -> tuple[Tensor, Tensor]:
    """(positive logits (n,), log-sum-exp over the candidates (n,)) of one view's queries."""
    n = rows.shape[0]
    local = torch.arange(n, device=rows.device) + offset
    row_idx = torch.arange(n, device=rows.device)
    same_logits = rows @ same.T / temperature  # (n, N): the row's own column is excluded
    same_logits = same_logits.index_put((row_idx, local), same_logits.new_full((), float("-inf")))
    other_logits = rows @ other.T / temperature  # (n, N): the positive is column offset + i
    parts = [same_logits, other_logits]
    if queue is not None:
        parts.append(rows @ queue.T / temperature)  # (n, K)
    return other_logits[row_idx, local], torch.logsumexp(torch.cat(parts, dim=1), dim=1)


def info_nce(
    q_a: Tensor,
    q_b: Tensor,
    k_a: Tensor,
    k_b: Tensor,
    temperature: float = 0.1,
    gather_distributed: bool = False,
    queue: Tensor | None = None,
) -> dict[str, Tensor]:
    """Symmetric InfoNCE with in-batch and queue negatives (module doc); returns
    ``{"loss", "alignment", "uniformity"}``."""
    if temperature <= 0:
        raise ConfigError(
            f"The contrastive temperature must be positive, got {temperature}. Typical values "
            "are 0.1 to 0.5 (SimCLR), 1.0 in the soft-discretization MoCo-SimCLR."
        )
    check_views(q_a, q_b, "InfoNCE / NT-Xent loss", min_batch=1)
    check_views(k_a, k_b, "InfoNCE / NT-Xent loss", min_batch=1)
    n = q_a.shape[0]
    keys_are_queries = k_a is q_a and k_b is q_b
    q_a, q_b = F.normalize(q_a, dim=1), F.normalize(q_b, dim=1)
    k_a, k_b = (q_a, q_b) if keys_are_queries else (F.normalize(k_a, dim=1),
                                                     F.normalize(k_b, dim=1))
    offset = 0
    all_qa, all_qb, all_ka, all_kb = q_a, q_b, k_a, k_b
    if gather_distributed and world_size() > 1:
        offset = rank() * n
        all_qa, all_qb = gather_with_grad(q_a), gather_with_grad(q_b)
        all_ka, all_kb = ((all_qa, all_qb) if keys_are_queries
                          else (gather_with_grad(k_a), gather_with_grad(k_b)))
    negatives = None
    if queue is not None and queue.numel() > 0:
        negatives = F.normalize(queue.detach().to(q_a.dtype), dim=1)
    pos_a, lse_a = _direction(q_a, all_qa, all_kb, negatives, offset, temperature)
    pos_b, lse_b = _direction(q_b, all_qb, all_ka, negatives, offset, temperature)
    alignment = -torch.cat([pos_a, pos_b]).mean()
    uniformity = torch.cat([lse_a, lse_b]).mean()
    return {"loss": alignment + uniformity, "alignment": alignment, "uniformity": uniformity}


def nt_xent_loss(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.1,
    gather_distributed: bool = False,
) -> dict[str, Tensor]:
    """NT-Xent loss; returns ``{"loss", "alignment", "uniformity"}`` with loss = sum of the two."""
    return info_nce(z_a, z_b, z_a, z_b, temperature, gather_distributed)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss` (temperature 0.1 by default)."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss": alignment + uniformity, "alignment", "uniformity"}``."""
        return nt_xent_loss(z_a, z_b, self.temperature, self.gather_distributed)
