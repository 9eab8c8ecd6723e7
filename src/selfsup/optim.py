"""Optimizers (Adam, AdamW, SGD, LARS) and per-step learning-rate schedules.

Learning rate: ``base_lr = lr * batch_size / 256`` when ``scale_lr_by_batch`` (linear scaling
rule), else ``lr``. Schedules, evaluated once per optimizer step ``k`` with ``T`` total steps
(epochs x steps per epoch, or ``trainer.max_steps`` when that stops earlier) and
``W = round(warmup_epochs * T / epochs)`` warm-up steps, start factor ``s``:

* warm-up (``k < W``):  ``lr_k = base_lr * (s + (1 - s) * k / W)``;
* ``warmup_cosine`` after warm-up: ``lr_k = min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2``
  with ``t = (k - W) / (T - W)`` clipped to [0, 1];
* ``warmup_constant`` after warm-up and ``constant``: ``lr_k = base_lr``.

LARS (You et al., 2017, in the form used by Barlow Twins / VICReg): for every parameter ``w`` with
gradient ``g`` that is not excluded, ``u = g + wd * w``, ``u <- u * eta * ||w|| / ||u||`` (trust
ratio 1 if either norm is 0); for excluded parameters (biases and normalisation weights when
``exclude_bias_and_norm``) ``u = g``. With ``lars_clip`` (solo-learn's ``clip_lr``) the trust
ratio ``r`` becomes ``min(r / lr, 1)``, i.e. a layer's step is ``min(eta ||w|| / ||u||, lr)``
times ``u`` instead of ``lr eta ||w|| / ||u||``. Then heavy-ball momentum ``m <- mu * m + u`` and
``w <- w - lr * m`` (or ``w <- w - lr * (u + mu * m)`` with Nesterov).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from selfsup.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
SCHEDULES = ("constant", "warmup_cosine", "warmup_constant")


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule settings (see the module docstring for the math)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    lars_eta: float = 0.02
    lars_clip: bool = False
    exclude_bias_and_norm: bool = True
    scale_lr_by_batch: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    warmup_start_factor: float = 0.0
    fused: bool = False

    def validate(self) -> None:
        """Raise ConfigError for unknown names or out-of-range values."""
        if self.name not in OPTIMIZERS:
            _bad(f"optim.name '{self.name}' is not a known optimizer; choose one of {OPTIMIZERS}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _bad(f"optim.lr must be a positive finite number, got {self.lr}.")
        if not self.weight_decay >= 0:
            _bad(f"optim.weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.momentum < 1:
            _bad(f"optim.momentum must lie in [0, 1), got {self.momentum}.")
        if self.nesterov and (self.name not in ("sgd", "lars") or self.momentum == 0):
            _bad(
                "optim.nesterov=true needs optim.name 'sgd' or 'lars' and a momentum > 0; got "
                f"name '{self.name}' with momentum {self.momentum}."
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _bad(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}.")
        if not self.eps > 0:
            _bad(f"optim.eps must be > 0, got {self.eps}.")
        if not self.lars_eta > 0:
            _bad(f"optim.lars_eta must be > 0, got {self.lars_eta}.")
        if self.schedule not in SCHEDULES:
            _bad(f"optim.schedule '{self.schedule}' is unknown; choose one of {SCHEDULES}.")
        if not self.warmup_epochs >= 0:
            _bad(f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        if self.schedule == "constant" and self.warmup_epochs > 0:
            _bad(
                f"optim.schedule 'constant' has no warm-up but optim.warmup_epochs is "
                f"{self.warmup_epochs}; use schedule 'warmup_constant' or set warmup_epochs to 0."
            )
        if not self.min_lr >= 0:
            _bad(f"optim.min_lr must be >= 0, got {self.min_lr}.")
        if not 0 <= self.warmup_start_factor <= 1:
            _bad(f"optim.warmup_start_factor must lie in [0, 1], got {self.warmup_start_factor}.")


def _bad(msg: str) -> None:
    raise ConfigError(f"Invalid optimizer configuration: {msg} Fix the value in the config file.")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio ``eta * ||w|| / ||g + wd * w||``.

    Parameter groups with ``lars_exclude=True`` get neither weight decay nor the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        nesterov: bool = False,
        lars_exclude: bool = False,
        clip: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "nesterov": nesterov,
            "lars_exclude": lars_exclude,
            "clip": clip,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one LARS update (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            mu, lr = group["momentum"], group["lr"]
            if group["lars_exclude"]:
                updates = grads
            else:
                wd = group["weight_decay"]
                if wd != 0:
                    updates = torch._foreach_add(grads, params, alpha=wd)
                else:
                    updates = torch._foreach_mul(grads, 1.0)
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(updates))
                ok = (w_norm > 0) & (u_norm > 0)
                trust = torch.where(ok, group["eta"] * w_norm / u_norm.clamp_min(1e-30), 1.0)
                if group.get("clip", False):  # solo-learn's clip_lr: at most lr per step
                    trust = torch.where(ok, (trust / lr).clamp(max=1.0), trust)
                torch._foreach_mul_(updates, list(trust.to(updates[0].dtype).unbind()))
            if mu != 0:
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, updates)
                if group["nesterov"]:
                    steps = torch._foreach_add(updates, bufs, alpha=mu)
                else:
                    steps = bufs
            else:
                steps = updates
            torch._foreach_add_(params, steps, alpha=-lr)
        return loss


def base_learning_rate(cfg: OptimConfig, batch_size: int) -> float:
    """``cfg.lr * batch_size / 256`` when ``cfg.scale_lr_by_batch``, else ``cfg.lr``."""
    if batch_size < 1:
        raise ConfigError(f"The batch size must be a positive integer, got {batch_size}.")
    return cfg.lr * batch_size / 256 if cfg.scale_lr_by_batch else cfg.lr


def _param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            "The model has no trainable parameters (all have requires_grad=False), so there is "
            "nothing to optimize. Check which parts of the model are frozen."
        )
    if not cfg.exclude_bias_and_norm:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases and norm-layer scales/shifts
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": cfg.weight_decay})
    if no_decay:
        group: dict[str, Any] = {"params": no_decay, "weight_decay": 0.0}
        if cfg.name == "lars":
            group["lars_exclude"] = True
        groups.append(group)
    return groups


def _construct(cls: type, groups: list[dict[str, Any]], fused: bool, **kw: Any) -> Any:
    """Build ``cls`` with ``fused=True`` when asked and supported, else foreach/default."""
    if fused:
        try:
            return cls(groups, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            return cls(groups, foreach=True, **kw)
    return cls(groups, **kw)


def build_optimizer(module: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    """Optimizer over ``module``'s trainable parameters; with ``exclude_bias_and_norm`` 1-d
    parameters (biases, norm weights) go to a group without weight decay (and without LARS
    adaptation)."""
    cfg.validate()
    lr = base_learning_rate(cfg, batch_size)
    groups = _param_groups(module, cfg)
    wd = cfg.weight_decay
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        return _construct(cls, groups, cfg.fused, lr=lr, betas=betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "sgd":
        return _construct(
            torch.optim.SGD,
            groups,
            cfg.fused,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=wd,
        )
    return LARS(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=wd,
        eta=cfg.lars_eta,
        nesterov=cfg.nesterov,
        clip=cfg.lars_clip,
    )


def scheduled_lr(
    step: int, base_lr: float, cfg: OptimConfig, total_steps: int, warmup_steps: int
) -> float:
    """Learning rate at optimizer step ``step`` (formulas in the module docstring)."""
    if cfg.schedule == "constant":
        return base_lr
    if step < warmup_steps:
        s = cfg.warmup_start_factor
        return base_lr * (s + (1.0 - s) * step / warmup_steps)
    if cfg.schedule == "warmup_constant":
        return base_lr
    span = total_steps - warmup_steps
    t = 1.0 if span <= 0 else min(max((step - warmup_steps) / span, 0.0), 1.0)
    return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    steps_per_epoch: int,
    epochs: int,
    total_steps: int | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A LambdaLR to be stepped once per optimizer step, following ``cfg.schedule``.

    ``total_steps`` (T) is where training really stops (``Method.total_steps()``: ``epochs x
    steps_per_epoch``, or ``trainer.max_steps`` when that is smaller); the default is the full
    ``epochs x steps_per_epoch``. A shortened run keeps the schedule's shape: the warm-up stays the
    same fraction of training, ``W = round(warmup_epochs / epochs * T)`` (solo-learn's
    ``warmup_epochs * estimated_stepping_batches / max_epochs``), and the cosine ends at step T.
    """
    cfg.validate()
    if steps_per_epoch < 1 or epochs < 1:
        raise ConfigError(
            f"The learning-rate schedule needs at least one epoch of at least one step; got "
            f"{epochs} epochs of {steps_per_epoch} steps. Check the dataset size, batch size and "
            "the number of epochs."
        )
    if cfg.warmup_epochs > epochs:
        raise ConfigError(
            f"optim.warmup_epochs ({cfg.warmup_epochs}) is longer than training ({epochs} "
            "epochs). Reduce warmup_epochs or train for more epochs."
        )
    full = steps_per_epoch * epochs
    total = full if total_steps is None else total_steps
    if not 1 <= total <= full:
        raise ConfigError(
            f"The learning-rate schedule needs between 1 and {full} total steps ({epochs} epochs "
            f"of {steps_per_epoch} steps), got {total}. Check trainer.max_steps."
        )
    steps_per_warmup_epoch = steps_per_epoch if total == full else total / epochs
    warmup = round(cfg.warmup_epochs * steps_per_warmup_epoch)
    lambdas = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        lambdas.append(_factor_fn(base, cfg, total, warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _factor_fn(base: float, cfg: OptimConfig, total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return scheduled_lr(step, base, cfg, total, warmup) / base

    return factor
