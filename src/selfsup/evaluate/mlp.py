"""MLP probe: a one-hidden-layer classifier on frozen, standardized features.

The probe is ``f(x) = W2 ReLU(BN(W1 x + b1)) + b2`` trained with Adam (L2 weight decay) on the
mean cross-entropy, in shuffled mini-batches. The number of epochs is chosen by accuracy on a seeded
validation split carved from the training split (early stopping on validation, never on test); the
probe is then re-initialised with the same seed, refit on the whole training split for that many
epochs and scored once on the test split.
"""

from __future__ import annotations

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
    split_train_val,
    standardize,
)

__all__ = ["mlp_probe"]


def _make_mlp(d: int, hidden: int, k: int, seed: int) -> nn.Module:
    """Linear-BN-ReLU-Linear, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, k)
        )


def _train(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    *,
    hidden: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train for ``epochs`` epochs; returns the model and the validation accuracy after each."""
    model = _make_mlp(x.shape[1], hidden, k, seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    x, y = x.to(device, torch.float32), y.to(device)
    val_x = None if val is None else val[0].to(device, torch.float32)
    history: list[float] = []
    for _ in range(epochs):
        model.train()
        for idx in shuffled_batches(x.shape[0], batch_size, gen):
            idx = idx.to(device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None:
            history.append(accuracy(predict_classes(model, val_x), val[1]))
    return model, history


def mlp_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int | None = None,
    hidden: int = 512,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """MLP-probe test accuracy with the epoch count chosen on a validation split of train.

    Trains up to ``epochs`` epochs on the training rows minus a stratified validation split
    (``val_fraction``, ``seed``), picks the first epoch with the best validation accuracy, then
    refits from the same initialisation on the full training split for that many epochs and
    reports test accuracy. Features are standardized with the statistics of the rows trained on.
    """
    if hidden < 1 or epochs < 1 or batch_size < 1:
        raise ConfigError(
            f"hidden, epochs and batch_size must be positive integers, got hidden={hidden}, "
            f"epochs={epochs}, batch_size={batch_size}."
        )
    if lr <= 0 or weight_decay < 0:
        raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {lr} and {weight_decay}.")
    train_x, train_y = labeled_only(train_x, train_y, "training", min_classes=2)
    test_x, test_y = labeled_only(test_x, test_y, "test")
    k = resolve_num_classes(num_classes, train_y, test_y)
    dev = resolve_device(device)
    opts = {
        "hidden": hidden,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "device": dev,
    }

    tr_idx, va_idx = split_train_val(train_y, val_fraction, seed)
    sub_x, val_x = standardize(train_x[tr_idx], train_x[va_idx])
    _, history = _train(
        sub_x, train_y[tr_idx], k, epochs=epochs, val=(val_x, train_y[va_idx]), **opts
    )
    best = max(range(epochs), key=lambda i: (history[i], -i))
    best_epochs = best + 1

    full_x, tst_x = standardize(train_x, test_x)
    model, _ = _train(full_x, train_y, k, epochs=best_epochs, **opts)
    return {
        "probe": "mlp",
        "accuracy": accuracy(predict_classes(model, tst_x.to(dev, torch.float32)), test_y),
        "val_accuracy": history[best],
        "epochs": best_epochs,
        "max_epochs": int(epochs),
        "train_accuracy": accuracy(predict_classes(model, full_x.to(dev, torch.float32)), train_y),
        "hidden": int(hidden),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "n_train": int(train_y.numel()),
        "n_val": int(va_idx.numel()),
        "n_test": int(test_y.numel()),
        "num_classes": k,
    }
