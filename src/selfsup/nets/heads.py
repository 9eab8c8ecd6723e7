"""MLP projection / prediction heads.

``mlp_head(in_dim, hidden_dims, out_dim)`` is ``[Linear -> BatchNorm1d -> ReLU] * len(hidden_dims)``
followed by ``Linear(.., out_dim, bias=last_bias)`` and optionally a final
``BatchNorm1d(out_dim, affine=last_bn_affine)`` when ``last_bn``. Each method's projector and
predictor sizes are its config's ``proj_dims`` / ``pred_hidden`` (see ``methods/``).
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
