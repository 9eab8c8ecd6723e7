"""The target (momentum) network of BYOL and MoCo: frozen EMA copies of online sub-networks.

After every optimizer step k the target moves towards the online weights,

    xi <- m_k xi + (1 - m_k) theta,    m_k = final - (final - base) (cos(pi k / K) + 1) / 2,

rising from ``base`` (k = 0) to ``final`` (k = K, the run's optimizer steps) on a cosine; with
``base == final`` the momentum is constant (MoCo, the soft-discretization presets). Buffers (batch
norm statistics, a k-means codebook) are copied from the online network at each update.

A sub-module may define ``as_momentum_copy()``: it is called on the target's copy once, e.g. so a
VQ bridge whose codebook is a copied buffer stops updating that codebook on its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from selfsup.errors import ConfigError


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``; step clipped to
    ``[0, total_steps]``."""
    if total_steps <= 0:
        raise ConfigError(
            f"The target-network momentum schedule needs a positive number of training steps, "
            f"got {total_steps}. Check that the dataset is not empty and that epochs/max_steps "
            "are positive."
        )
    if not 0.0 <= base <= 1.0 or not 0.0 <= final <= 1.0:
        raise ConfigError(
            f"The target momentum must lie in [0, 1]; got base={base}, final={final}. Typical "
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


class MomentumTarget(nn.ModuleDict):
    """Frozen EMA copies of named online sub-networks, with their momentum schedule.

    ``MomentumTarget({"backbone": f, "projector": g}, base, final)`` holds ``self["backbone"]``
    etc. (no gradient, not trained by the optimizer, saved in checkpoints).
    """

    def __init__(self, online: Mapping[str, nn.Module], base: float, final: float) -> None:
        if not 0.0 <= base <= final <= 1.0:
            raise ConfigError(
                f"The target network needs 0 <= base momentum <= final momentum <= 1, got {base} "
                f"and {final}; BYOL uses 0.99 and 1.0, MoCo a constant 0.99."
            )
        copies = {}
        for name, module in online.items():
            twin = copy.deepcopy(module).requires_grad_(False)
            for sub in twin.modules():
                hook = getattr(sub, "as_momentum_copy", None)
                if callable(hook):
                    hook()
            copies[name] = twin
        super().__init__(copies)
        self.base = float(base)
        self.final = float(final)

    def momentum(self, step: int, total_steps: int) -> float:
        """m_k at optimizer step k of a run of ``total_steps`` steps."""
        if self.base == self.final:
            return self.base
        return cosine_momentum(step, total_steps, self.base, self.final)

    @torch.no_grad()
    def move_towards(self, online: Mapping[str, nn.Module], momentum: float) -> None:
        """``xi <- m xi + (1 - m) theta`` for every held network (buffers copied)."""
        for name, target in self.items():
            ema_update(target, online[name], momentum)
