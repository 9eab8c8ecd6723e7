"""The papers' linear-evaluation protocol: a linear layer trained by SGD for fixed epochs.

On frozen features h (the same preprocessing for train and test: no augmentation, features
computed once), fit ``f(h) = W h + b`` by minimising the mean cross-entropy with mini-batch SGD
(momentum 0.9, Nesterov), learning rate ``lr = base_lr * batch_size / 256`` (a float: no integer
truncation, which made the AAVAE release's rate 0 below a batch of 256) decayed by a cosine over all
steps, for exactly ``epochs`` epochs (50 in the VICReg single-GPU recipe, 90 in AAVAE). The test
split is scored once, after the last epoch: nothing is selected on it. ``optimizer="adam"`` uses
Adam with the same schedule instead.

Unlike :func:`selfsup.evaluate.linear_probe` (L-BFGS logistic regression with weight decay chosen
on a validation split), this reproduces the published protocols number for number.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.evaluate.features import (
    accuracy,
    labeled_only,
    predict_classes,
    resolve_device,
    resolve_num_classes,
    shuffled_batches,
    standardize,
)

__all__ = ["linear_protocol_probe"]

OPTIMIZERS = ("sgd", "adam")


def linear_protocol_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 50,
    base_lr: float = 0.1,
    batch_size: int = 256,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    standardize_features: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Test accuracy of a linear layer trained for exactly ``epochs`` epochs (cosine-decayed lr)."""
    if epochs < 1 or batch_size < 1:
        raise ConfigError(
            f"The linear protocol needs epochs >= 1 and batch_size >= 1, got {epochs} and "
            f"{batch_size}."
        )
    if not base_lr > 0 or weight_decay < 0:
        raise ConfigError(
            f"The linear protocol needs lr > 0 and weight_decay >= 0, got {base_lr} and "
            f"{weight_decay}."
        )
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer {optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}."
        )
    train_x, train_y = labeled_only(train_x, train_y, "training", min_classes=2)
    test_x, test_y = labeled_only(test_x, test_y, "test")
    k = resolve_num_classes(num_classes, train_y, test_y)
    dev = resolve_device(device)
    if standardize_features:
        train_x, test_x = standardize(train_x, test_x)
    x = train_x.to(dev, torch.float32)
    y = train_y.to(dev)
    lr = base_lr * batch_size / 256
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(x.shape[1], k).to(dev)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    for _ in range(epochs):
        model.train()
        epoch_loss = torch.zeros((), device=dev)
        for idx in shuffled_batches(x.shape[0], batch_size, gen):
            idx = idx.to(dev)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            epoch_loss += loss.detach()
        losses.append(float(epoch_loss) / steps_per_epoch)
    if not all(math.isfinite(v) for v in losses):
        raise ConfigError(
            f"The linear protocol's loss became non-finite (lr {lr:g}). Lower --lr, or standardize "
            "the features (--standardize)."
        )
    return {
        "probe": "linear",
        "protocol": f"{optimizer}-{epochs}-epochs",
        "accuracy": accuracy(predict_classes(model, test_x.to(dev, torch.float32)), test_y),
        "train_accuracy": accuracy(predict_classes(model, x), train_y),
        "final_train_loss": losses[-1],
        "epochs": int(epochs),
        "lr": float(lr),
        "base_lr": float(base_lr),
        "batch_size": int(batch_size),
        "optimizer": optimizer,
        "weight_decay": float(weight_decay),
        "n_train": int(train_y.numel()),
        "n_test": int(test_y.numel()),
        "num_classes": k,
    }
