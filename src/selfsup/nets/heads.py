"""MLP projection / prediction heads.

``mlp_head(in_dim, hidden_dims, out_dim)`` is ``[Linear -> BatchNorm1d -> ReLU] * len(hidden_dims)``
followed by ``Linear(.., out_dim, bias=last_bias)`` and optionally a final
``BatchNorm1d(out_dim, affine=last_bn_affine)`` when ``last_bn``. Presets:

==========================  ======================================  ========================
preset                      layers (defaults)                       reference
==========================  ======================================  ========================
``vicreg_projector``        in-1024-1024-1024, last bias off        VICReg (paper: 8192 x 3)
``barlow_projector``        in-2048-2048-2048, last bias off        Barlow Twins (paper: 8192 x 3)
``byol_projector``          in-4096-256                             BYOL
``byol_predictor``          256-4096-256                            BYOL
``simclr_projector``        in-2048-128 (with hidden BN)            SimCLR v2-style
==========================  ======================================  ========================
"""

from __future__ import annotations

import itertools

from torch import nn

from selfsup.errors import ConfigError


def mlp_head(
    in_dim: int,
    hidden_dims: list[int],
    out_dim: int,
    last_bn: bool = False,
    last_bias: bool = True,
    last_bn_affine: bool = False,
) -> nn.Sequential:
    """``(Linear-BN-ReLU) per hidden dim, then Linear(out_dim)`` (+ BN(out_dim) if ``last_bn``)."""
    dims = [in_dim, *hidden_dims, out_dim]
    if any(int(d) < 1 for d in dims):
        raise ConfigError(
            f"Head layer sizes must be positive integers, got in_dim={in_dim}, "
            f"hidden_dims={list(hidden_dims)}, out_dim={out_dim}. Fix the projector/predictor "
            "dimensions in the method config."
        )
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(dims[:-1]):
        layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], out_dim, bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


def vicreg_projector(in_dim: int, dims: list[int] | None = None) -> nn.Sequential:
    """VICReg expander: hidden ``dims[:-1]``, output ``dims[-1]`` (default [1024]*3), no bias."""
    dims = [1024, 1024, 1024] if dims is None else list(dims)
    _check_dims(dims, "vicreg_projector")
    return mlp_head(in_dim, dims[:-1], dims[-1], last_bias=False)


def barlow_projector(in_dim: int, dims: list[int] | None = None) -> nn.Sequential:
    """Barlow Twins projector: hidden ``dims[:-1]``, output ``dims[-1]`` (default [2048]*3)."""
    dims = [2048, 2048, 2048] if dims is None else list(dims)
    _check_dims(dims, "barlow_projector")
    return mlp_head(in_dim, dims[:-1], dims[-1], last_bias=False)


def byol_projector(in_dim: int, hidden: int = 4096, out: int = 256) -> nn.Sequential:
    """BYOL projector ``Linear(in, hidden)-BN-ReLU-Linear(hidden, out)``."""
    return mlp_head(in_dim, [hidden], out)


def byol_predictor(dim: int = 256, hidden: int = 4096) -> nn.Sequential:
    """BYOL predictor ``Linear(dim, hidden)-BN-ReLU-Linear(hidden, dim)``."""
    return mlp_head(dim, [hidden], dim)


def simclr_projector(in_dim: int, hidden: int = 2048, out: int = 128) -> nn.Sequential:
    """SimCLR projector ``Linear(in, hidden)-BN-ReLU-Linear(hidden, out)``."""
    return mlp_head(in_dim, [hidden], out)


def _check_dims(dims: list[int], name: str) -> None:
    if len(dims) < 1:
        raise ConfigError(
            f"{name} needs at least one layer size (the output dimension), got an empty list. "
            "Set e.g. dims: [2048, 2048, 2048]."
        )
