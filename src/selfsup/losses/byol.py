"""BYOL loss (Grill et al., 2020).

* ``byol_loss(p, z) = mean_i (2 - 2 * cos(p_i, stopgrad(z_i)))`` = mean squared distance between
  the L2-normalised prediction and target projection.
* Symmetric loss over two views, where ``p_*`` are online predictions and ``z_*`` target
  projections, in one of two conventions (``convention``):

  - ``"grill"`` (the paper): ``byol_loss(p_a, z_b) + byol_loss(p_b, z_a)``
    ``= 4 - 2 (mean cos(p_a, z_b) + mean cos(p_b, z_a))``;
  - ``"released"`` (lavoiems/SoftDiscrete_SSL ``src/models/byol/train.py:160-174``):
    ``-(mean cos(p_a, z_b) + mean cos(p_b, z_a)) / 2``.

  grill = 4 + 4 * released: the same minimiser, gradients 4x larger under ``grill``.

The target-network momentum schedule and EMA update live in :mod:`selfsup.nets.ema`
(``cosine_momentum`` and ``ema_update`` are re-exported here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.losses.distributed import check_views
from selfsup.nets.ema import cosine_momentum, ema_update

__all__ = ["BYOLLoss", "CONVENTIONS", "byol_loss", "cosine_momentum", "ema_update",
           "symmetric_byol_loss"]

CONVENTIONS = ("grill", "released")


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_i (2 - 2 cos(p_i, z_i))`` with the target ``z`` detached (no gradient to it)."""
    p = F.normalize(p, dim=-1)
    z = F.normalize(z.detach(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


def symmetric_byol_loss(
    p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
    convention: str = "grill",
) -> dict[str, torch.Tensor]:
    """``{"loss", "loss_ab": byol_loss(p_a, z_b), "loss_ba": byol_loss(p_b, z_a)}`` with
    ``loss = loss_ab + loss_ba`` (``grill``) or ``(loss_ab + loss_ba) / 4 - 1`` (``released``,
    which equals ``-(mean cos_ab + mean cos_ba) / 2``)."""
    if convention not in CONVENTIONS:
        raise ConfigError(
            f"Unknown BYOL loss convention {convention!r}; use 'grill' (2 - 2 cos per direction, "
            "summed) or 'released' (-(cos_ab + cos_ba) / 2, the soft-discretization code)."
        )
    check_views(p_a, p_b, "BYOL loss", min_batch=1)
    check_views(z_a, z_b, "BYOL loss", min_batch=1)
    loss_ab = byol_loss(p_a, z_b)
    loss_ba = byol_loss(p_b, z_a)
    total = loss_ab + loss_ba
    if convention == "released":
        total = total / 4.0 - 1.0
    return {"loss": total, "loss_ab": loss_ab, "loss_ba": loss_ba}


class BYOLLoss(nn.Module):
    """Symmetric BYOL loss; ``forward(p_a, p_b, z_a, z_b)`` returns the dict of
    :func:`symmetric_byol_loss` (online predictions ``p``, target projections ``z``)."""

    def __init__(self, convention: str = "grill") -> None:
        super().__init__()
        self.convention = convention

    def forward(
        self, p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "loss_ab", "loss_ba"}``."""
        return symmetric_byol_loss(p_a, p_b, z_a, z_b, self.convention)
