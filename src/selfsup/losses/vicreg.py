"""VICReg loss (Bardes, Ponce & LeCun, 2022), following the official implementation.

For embeddings ``z_a, z_b`` of shape (n, d):

* invariance  ``s = mean_{i,k} (z_a[i,k] - z_b[i,k])^2`` (MSE, always on the local batch);
* variance    ``v(z) = mean_k relu(gamma - sqrt(Var_i z[i,k] + eps))`` with the unbiased
  variance, and the term is ``(v(z_a) + v(z_b)) / 2``;
* covariance  ``c(z) = sum_{k != l} C[k,l]^2 / d`` with ``C = (z - mean)^T (z - mean) / (n - 1)``,
  and the term is ``c(z_a) + c(z_b)``;
* total       ``lambda * s + mu * v + nu * c`` with defaults lambda = mu = 25, nu = 1.

Convention: the variance term is the MEAN of the two views' hinges, as facebookresearch/vicreg
(``main_vicreg.py:207``, ``std_coeff`` 25). Code that SUMS them with weight w
(augustwester/vicreg ``train.py:61``, solo-learn ``solo/losses/vicreg.py:55``, both w = 25) is
this loss with ``mu = 2 w`` (50). ``eps = 0`` gives the plain standard deviation
(augustwester/vicreg ``loss.py:5``); its gradient is undefined where a column is constant.

With ``gather_distributed=True`` the variance and covariance terms use the embeddings of all
processes (via :func:`gather_with_grad`); the invariance term stays per process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.distributed import check_views, gather_with_grad


def vicreg_variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """``mean_k relu(gamma - sqrt(unbiased Var_i z[i,k] + eps))`` for z of shape (n, d)."""
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(gamma - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the (n-1)-normalised covariance, divided by d."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (n - 1)
    off_diag = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diag.pow(2).sum() / d


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    inv_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """VICReg loss; returns ``{"loss", "invariance", "variance", "covariance"}``.

    The terms are unweighted; ``loss`` is their weighted sum.
    """
    check_views(z_a, z_b, "VICReg loss")
    invariance = F.mse_loss(z_a, z_b)
    if gather_distributed:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    variance = 0.5 * (vicreg_variance(z_a, gamma, eps) + vicreg_variance(z_b, gamma, eps))
    covariance = vicreg_covariance(z_a) + vicreg_covariance(z_b)
    loss = inv_weight * invariance + var_weight * variance + cov_weight * covariance
    return {
        "loss": loss,
        "invariance": invariance,
        "variance": variance,
        "covariance": covariance,
    }


class VICRegLoss(nn.Module):
    """Module form of :func:`vicreg_loss`; paper defaults 25, 25, 1, gamma=1, eps=1e-4."""

    def __init__(
        self,
        inv_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.inv_weight = inv_weight
        self.var_weight = var_weight
        self.cov_weight = cov_weight
        self.gamma = gamma
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "invariance": s, "variance": v, "covariance": c}``."""
        return vicreg_loss(
            z_a,
            z_b,
            self.inv_weight,
            self.var_weight,
            self.cov_weight,
            self.gamma,
            self.eps,
            self.gather_distributed,
        )
