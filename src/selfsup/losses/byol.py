"""BYOL loss, target-momentum schedule and EMA update (Grill et al., 2020).

* ``byol_loss(p, z) = mean_i (2 - 2 * cos(p_i, stopgrad(z_i)))`` = mean squared distance between
  the L2-normalised prediction and target projection.
* Symmetric loss over two views: ``byol_loss(p_a, z_b) + byol_loss(p_b, z_a)`` (summed, as the
  paper), where ``p_*`` are online predictions and ``z_*`` target projections.
* ``cosine_momentum(k, K) = final - (final - base) * (cos(pi * k / K) + 1) / 2`` (base at k = 0,
  final at k = K).
* ``ema_update``: ``xi <- m * xi + (1 - m) * theta`` for parameters; buffers (BN running stats)
  are copied from the online network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.losses.distributed import check_views


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_i (2 - 2 cos(p_i, z_i))`` with the target ``z`` detached (no gradient to it)."""
    p = F.normalize(p, dim=-1)
    z = F.normalize(z.detach(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


def symmetric_byol_loss(
    p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{"loss": l_ab + l_ba, "loss_ab": byol_loss(p_a, z_b), "loss_ba": byol_loss(p_b, z_a)}``."""
    check_views(p_a, p_b, "BYOL loss", min_batch=1)
    check_views(z_a, z_b, "BYOL loss", min_batch=1)
    loss_ab = byol_loss(p_a, z_b)
    loss_ba = byol_loss(p_b, z_a)
    return {"loss": loss_ab + loss_ba, "loss_ab": loss_ab, "loss_ba": loss_ba}


class BYOLLoss(nn.Module):
    """Symmetric BYOL loss; ``forward(p_a, p_b, z_a, z_b)`` returns the dict of
    :func:`symmetric_byol_loss` (online predictions ``p``, target projections ``z``)."""

    def forward(
        self, p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "loss_ab", "loss_ba"}``."""
        return symmetric_byol_loss(p_a, p_b, z_a, z_b)


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``; step clipped to
    ``[0, total_steps]``."""
    if total_steps <= 0:
        raise ConfigError(
            f"The BYOL momentum schedule needs a positive number of training steps, got "
            f"{total_steps}. Check that the dataset is not empty and that epochs/max_steps are "
            "positive."
        )
    if not 0.0 <= base <= 1.0 or not 0.0 <= final <= 1.0:
        raise ConfigError(
            f"BYOL target momentum must lie in [0, 1]; got base={base}, final={final}. Typical "
            "values are base=0.99 (or 0.996) and final=1.0."
        )
    step = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target_param <- momentum * target_param + (1 - momentum) * online_param``
    for floating-point parameters; every buffer of ``target`` is copied from ``online``.

    Uses fused foreach kernels (``torch._foreach_lerp_``), one call per dtype/device group.
    """
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    t_bufs = list(target.buffers())
    o_bufs = list(online.buffers())
    if len(t_params) != len(o_params) or len(t_bufs) != len(o_bufs):
        raise ValueError(
            "ema_update needs two networks of identical structure; got "
            f"{len(t_params)} vs {len(o_params)} parameters and {len(t_bufs)} vs {len(o_bufs)} "
            "buffers."
        )
    t_float = [t for t in t_params if t.is_floating_point()]
    o_float = [o for o, t in zip(o_params, t_params, strict=True) if t.is_floating_point()]
    if t_float:
        # lerp_(t, o, w) = t + w * (o - t) = (1 - w) * t + w * o with w = 1 - momentum
        torch._foreach_lerp_(t_float, o_float, 1.0 - momentum)
    if t_bufs:
        torch._foreach_copy_(t_bufs, o_bufs)
