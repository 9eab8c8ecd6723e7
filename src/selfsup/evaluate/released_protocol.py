"""SimVAE's released evaluation protocol (``selfsup eval linear|mlp --protocol released``).

Reproduces alicebizeul/simvae (main.py:186-212, 366-383, 436-496; src/model/models.py:24-47,
98-110): on cached, frozen representations (mu, no standardization) a head is trained with Adam
(lr 3e-4, default betas and eps, no weight decay) on the cross-entropy **summed** over each
mini-batch of 64 shuffled training samples (the last incomplete batch dropped), for 200 epochs;

* ``linear``: ``f(h) = W h + b`` (``Linear(d, C)``);
* ``mlp``: ``f(h) = W2 ReLU(W1 h + b1) + b2`` (``Linear(d, d)-ReLU-Linear(d, C)``).

After every epoch the head is scored on the whole test split, and the number reported
(``accuracy``) is the **maximum test accuracy over the epochs**, as the released code reports it.
That is model selection on the test split: the number is biased upwards and is not comparable
with protocols that score the test split once (selfsup's default probes choose everything on a
validation split carved from train). It is offered only to set selfsup runs beside the published
SimVAE tables; ``final_accuracy`` (after the last epoch, nothing selected) is reported next to it.
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
)
from selfsup.evaluate.linear_protocol import check_head_training

__all__ = ["HEADS", "released_head", "released_protocol_probe"]

HEADS = ("linear", "mlp")
TEST_SELECTION_WARNING = (
    "accuracy is the best test accuracy over epochs (the released SimVAE protocol): model "
    "selection on the test split, biased upwards; final_accuracy is the unselected number"
)


def released_head(head: str, d: int, k: int, seed: int) -> nn.Module:
    """``Linear(d, k)`` or ``Linear(d, d)-ReLU-Linear(d, k)``, PyTorch's default initialisation,
    drawn from ``seed`` without touching the global random state."""
    if head not in HEADS:
        raise ConfigError(f"Unknown head {head!r} for the released protocol; use linear or mlp.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head == "linear":
            return nn.Linear(d, k)
        return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, k))


def released_protocol_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    head: str = "linear",
    num_classes: int | None = None,
    epochs: int = 200,
    lr: float = 3e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Best (and final) test accuracy of a head trained as SimVAE's released evaluation does."""
    check_head_training("released protocol", epochs, batch_size, lr)
    train_x, train_y = labeled_only(train_x, train_y, "training", min_classes=2)
    test_x, test_y = labeled_only(test_x, test_y, "test")
    if train_y.numel() < batch_size:
        raise ConfigError(
            f"The released protocol drops the last incomplete batch, so it needs at least "
            f"batch_size = {batch_size} labeled training samples, got {train_y.numel()}."
        )
    k = resolve_num_classes(num_classes, train_y, test_y)
    dev = resolve_device(device)
    model = released_head(head, train_x.shape[1], k, seed).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    x, y = train_x.to(dev, torch.float32), train_y.to(dev)
    tx = test_x.to(dev, torch.float32)
    n_batches = x.shape[0] // batch_size
    history: list[float] = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(x.shape[0], generator=gen)[: n_batches * batch_size]
        for idx in order.to(dev).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx], reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(accuracy(predict_classes(model, tx), test_y))
    best = max(range(epochs), key=lambda i: (history[i], -i))
    return {
        "probe": head,
        "protocol": "released",
        "accuracy": history[best],
        "best_epoch": best + 1,
        "final_accuracy": history[-1],
        "test_accuracy_per_epoch": history,
        "selection": "test",
        "warning": TEST_SELECTION_WARNING,
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "n_train": int(train_y.numel()),
        "n_test": int(test_y.numel()),
        "num_classes": k,
    }
