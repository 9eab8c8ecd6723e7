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

:func:`augmented_linear_protocol` (protocol ``sgd-augmented``) is augustwester/vicreg's
``eval.py``: the frozen encoder (eval mode) sees a fresh random resized crop (scale [0.2, 1]) and
horizontal flip of every training image in every epoch, and the linear layer is trained with plain
SGD (no momentum) at lr 0.02 and weight decay 1e-6 for 50 epochs of batch 256, the lr following
``lr_e = lr (1 + cos(pi e / E)) / 2`` per epoch ``e`` (``CosineAnnealingLR`` stepped per epoch).
Test images get the same deterministic preprocessing as training images (normalised);
``normalize_test=False`` reproduces the original's un-normalised test images (a bug there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.augment import AugmentConfig, BatchAugment, to_float
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.features import (
    accuracy,
    labeled_only,
    predict_classes,
    resolve_device,
    resolve_num_classes,
    shuffled_batches,
    standardize,
)

__all__ = ["AUGMENTED_PROTOCOL", "augmented_linear_protocol", "augmented_sgd",
           "check_head_training", "linear_protocol_probe"]

OPTIMIZERS = ("sgd", "adam")
AUGMENTED_PROTOCOL = "sgd-augmented"


def check_head_training(protocol: str, epochs: int, batch_size: int, lr: float,
                        weight_decay: float = 0.0) -> None:
    """Refuse a head-training budget that cannot train: epochs, batch size >= 1, lr > 0,
    weight decay >= 0 (a ConfigError naming ``protocol``)."""
    if epochs < 1 or batch_size < 1:
        raise ConfigError(
            f"The {protocol} needs epochs >= 1 and batch_size >= 1, got {epochs} and "
            f"{batch_size}."
        )
    if not lr > 0 or weight_decay < 0:
        raise ConfigError(
            f"The {protocol} needs lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}."
        )


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
    check_head_training("linear protocol", epochs, batch_size, base_lr, weight_decay)
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


# ------------------------------------------------------------------ augmented-image protocol
def augmented_sgd(
    model: nn.Module, epochs: int, lr: float, weight_decay: float, momentum: float = 0.0
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Plain SGD (no Nesterov; momentum 0 in augustwester/vicreg ``eval.py:22``) and a cosine
    annealing to 0 over ``epochs``, to be stepped once per epoch (``eval.py:23, 54``)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


def _labels_of(dataset: Any) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.long().reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _images_of(dataset: Any, idx: torch.Tensor) -> torch.Tensor:
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return images[idx]
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx])


def augmented_linear_protocol(
    method: Any,
    train_set: Any,
    test_set: Any,
    *,
    num_classes: int | None = None,
    epochs: int = 50,
    base_lr: float = 0.02,
    batch_size: int = 256,
    weight_decay: float = 1e-6,
    momentum: float = 0.0,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: float = 0.5,
    normalize_test: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Linear evaluation on augmented images through the frozen encoder (see the module docstring).

    ``method`` provides ``encode`` (features of preprocessed images), ``preprocess`` (uint8 or
    [0, 1] float images -> the encoder's input) and ``info.image_shape``; it runs in eval mode
    (batch norm uses its running statistics) and is left in its previous mode. ``train_set`` /
    ``test_set``: in-memory datasets (``images`` uint8 (N, C, H, W), ``labels``) or map-style
    ``(image, label)`` datasets; unlabeled (-1) samples are skipped. Each step draws a random
    resized crop (``crop_scale``, aspect ratio [3/4, 4/3], bilinear) and a flip (``hflip``) of
    each image, preprocesses it as at evaluation, and takes one SGD step on the mean cross-entropy;
    every batch is used (the last one may be smaller). ``lr = base_lr * batch_size / 256``.
    """
    if epochs < 1 or batch_size < 1 or not base_lr > 0 or weight_decay < 0:
        raise ConfigError(
            f"The {AUGMENTED_PROTOCOL} protocol needs epochs >= 1, batch_size >= 1, lr > 0 and "
            f"weight_decay >= 0, got {epochs}, {batch_size}, {base_lr} and {weight_decay}."
        )
    dev = resolve_device(device)
    train_y, test_y = _labels_of(train_set), _labels_of(test_set)
    train_idx = torch.nonzero(train_y >= 0).flatten()
    test_idx = torch.nonzero(test_y >= 0).flatten()
    if test_idx.numel() == 0 or torch.unique(train_y[train_idx]).numel() < 2:
        raise DataError(
            f"The {AUGMENTED_PROTOCOL} protocol needs labeled train and test images of at least "
            "two classes; evaluate on a labeled dataset."
        )
    k = resolve_num_classes(num_classes, train_y[train_idx], test_y[test_idx])
    augment = BatchAugment(
        AugmentConfig(crop_scale=[float(v) for v in crop_scale], hflip=float(hflip)),
        tuple(method.info.image_shape),
    )
    lr = base_lr * batch_size / 256
    was_training = method.training
    method.eval()
    gen = torch.Generator().manual_seed(int(seed))
    aug_gen = torch.Generator().manual_seed(int(seed) + 1)
    try:
        with torch.no_grad():
            first = method.preprocess(_images_of(train_set, train_idx[:2]).to(dev))
            feature_dim = method.encode(first).reshape(first.shape[0], -1).shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            linear = nn.Linear(feature_dim, k).to(dev)
        opt, schedule = augmented_sgd(linear, epochs, lr, weight_decay, momentum)
        lrs, losses, correct = [], [], 0
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            total, correct = torch.zeros((), device=dev), torch.zeros((), device=dev)
            for idx in train_idx[torch.randperm(train_idx.numel(), generator=gen)].split(
                batch_size
            ):
                images = _images_of(train_set, idx).to(dev)
                y = train_y[idx].to(dev)
                with torch.no_grad():
                    x = method.preprocess(augment(images, generator=aug_gen))
                    h = method.encode(x).float().reshape(len(idx), -1)
                logits = linear(h)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
            schedule.step()
            losses.append(float(total) / train_idx.numel())
        if not all(math.isfinite(v) for v in losses):
            raise ConfigError(
                f"The {AUGMENTED_PROTOCOL} protocol's loss became non-finite (lr {lr:g}); lower "
                "--lr."
            )
        hits = 0
        with torch.no_grad():
            for idx in test_idx.split(batch_size):
                images = _images_of(test_set, idx).to(dev)
                x = method.preprocess(images) if normalize_test else to_float(images)
                pred = linear(method.encode(x).float().reshape(len(idx), -1)).argmax(1)
                hits += int((pred.cpu() == test_y[idx]).sum())
    finally:
        method.train(was_training)
    return {
        "probe": "linear",
        "protocol": f"{AUGMENTED_PROTOCOL}-{epochs}-epochs",
        "accuracy": hits / test_idx.numel(),
        "train_accuracy_augmented_last_epoch": float(correct) / train_idx.numel(),
        "final_train_loss": losses[-1],
        "epochs": int(epochs),
        "lr": float(lr),
        "base_lr": float(base_lr),
        "lr_per_epoch": [float(v) for v in lrs],
        "batch_size": int(batch_size),
        "optimizer": "sgd",
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "crop_scale": [float(v) for v in crop_scale],
        "hflip": float(hflip),
        "normalize_test": bool(normalize_test),
        "n_train": int(train_idx.numel()),
        "n_test": int(test_idx.numel()),
        "num_classes": k,
        "feature_dim": int(feature_dim),
    }
