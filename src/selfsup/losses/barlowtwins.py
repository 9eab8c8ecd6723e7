"""Barlow Twins loss (Zbontar et al., 2021).

Each view is standardised over the batch (batch norm without affine, biased variance):
``zhat = (z - mean_i z) / sqrt(Var_i z + eps)``. With ``C = zhat_a^T zhat_b / N`` (d x d),

    invariance = sum_k (1 - C_kk)^2,   redundancy = sum_{k != l} C_kl^2,
    loss = scale_loss * (invariance + lambda_offdiag * redundancy),

with ``lambda_offdiag = 5e-3`` (paper) and ``scale_loss = 1``. With ``gather_distributed`` the
embeddings of all processes are gathered first, so mean, std and ``C`` are over the global batch
(exactly the single-process loss on the concatenated batch; the official code achieves the same
with synchronised batch norm and an all-reduce of ``C``).
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.losses.distributed import check_views, gather_with_grad


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(z - mean) / sqrt(biased var + eps)`` per column over the batch (BN without affine)."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambda_offdiag: float = 5e-3,
    scale_loss: float = 1.0,
    eps: float = 1e-5,
    gather_distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """Barlow Twins loss; returns ``{"loss", "invariance", "redundancy"}`` (terms unweighted,
    unscaled)."""
    check_views(z_a, z_b, "Barlow Twins loss")
    if gather_distributed:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    n = z_a.shape[0]
    c = batch_standardize(z_a, eps).T @ batch_standardize(z_b, eps) / n
    diag = torch.diagonal(c)
    invariance = (1.0 - diag).pow(2).sum()
    redundancy = (c - torch.diag_embed(diag)).pow(2).sum()
    loss = scale_loss * (invariance + lambda_offdiag * redundancy)
    return {"loss": loss, "invariance": invariance, "redundancy": redundancy}


class BarlowTwinsLoss(nn.Module):
    """Module form of :func:`barlow_twins_loss` (lambda_offdiag = 5e-3, scale_loss = 1)."""

    def __init__(
        self,
        lambda_offdiag: float = 5e-3,
        scale_loss: float = 1.0,
        eps: float = 1e-5,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.lambda_offdiag = lambda_offdiag
        self.scale_loss = scale_loss
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "invariance", "redundancy"}``."""
        return barlow_twins_loss(
            z_a, z_b, self.lambda_offdiag, self.scale_loss, self.eps, self.gather_distributed
        )
