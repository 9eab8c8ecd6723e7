"""Linear probe: multinomial logistic regression on frozen, standardized features.

For features ``x_i`` (standardized with training statistics) and labels ``y_i`` in ``{0..K-1}``
the probe minimises the strongly convex objective

    L(W, b) = (1/n) * sum_i CE(W x_i + b, y_i) + (wd / 2) * ||W||_F^2,

(the bias is not penalised) full-batch with L-BFGS and a strong-Wolfe line search. This is the
same optimum as scikit-learn's ``LogisticRegression(C=1 / (wd * n))``. The weight decay is chosen
by accuracy on a seeded validation split carved from the training split, the probe is then refit on
the whole training split with that weight decay and scored once on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.evaluate.features import (
    accuracy,
    labeled_only,
    resolve_device,
    resolve_num_classes,
    split_train_val,
    standardize,
)

__all__ = ["fit_logistic_regression", "linear_probe", "predict", "predict_proba"]

# Rows per forward/backward chunk inside the full-batch closure: bounds the memory of the
# (rows, K) logits without changing the (exact, full-batch) loss and gradient.
CHUNK_ROWS = 65536


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 200,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean_i CE(W x_i + b, y_i) + wd/2 ||W||^2`` with full-batch L-BFGS.

    ``x`` (N, D) features (used as given: standardize them first), ``y`` (N,) labels in
    ``[0, num_classes)``. Starts from ``W = 0, b = 0`` (the problem is convex, so the result does
    not depend on randomness) and runs at most ``max_iter`` L-BFGS iterations with a strong-Wolfe
    line search. Computes in float64 when ``x`` is float64, else float32. Returns ``W``
    (num_classes, D) and ``b`` (num_classes,) on the compute device.
    """
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}.")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter}.")
    dev = resolve_device(device)
    dtype = _compute_dtype(x)
    x = x.to(dev, dtype)
    y = y.to(dev).long()
    n, d = x.shape
    weight = torch.zeros(num_classes, d, device=dev, dtype=dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=dev, dtype=dtype, requires_grad=True)
    tol_grad = 1e-10 if dtype == torch.float64 else 1e-7
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tol_grad,
        tolerance_change=tol_grad * 1e-2,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        total = torch.zeros((), device=dev, dtype=dtype)
        for start in range(0, n, CHUNK_ROWS):
            logits = torch.addmm(bias, x[start : start + CHUNK_ROWS], weight.t())
            loss = F.cross_entropy(logits, y[start : start + CHUNK_ROWS], reduction="sum") / n
            loss.backward()
            total += loss.detach()
        if weight_decay > 0:
            reg = 0.5 * weight_decay * weight.pow(2).sum()
            reg.backward()
            total += reg.detach()
        return total

    opt.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def predict_proba(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, batch_size: int = CHUNK_ROWS
) -> torch.Tensor:
    """Class probabilities ``softmax(W x + b)`` (N, K) on the CPU, computed on ``weight.device``."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(weight.device, weight.dtype)
        out.append(torch.softmax(torch.addmm(bias, xb, weight.t()), dim=1).cpu())
    if not out:
        return torch.zeros(0, weight.shape[0], dtype=weight.dtype)
    return torch.cat(out)


@torch.no_grad()
def predict(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, batch_size: int = CHUNK_ROWS
) -> torch.Tensor:
    """Predicted labels ``argmax_k (W x + b)_k`` (N,) int64 on the CPU."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(weight.device, weight.dtype)
        out.append(torch.addmm(bias, xb, weight.t()).argmax(dim=1).cpu())
    if not out:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(out)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    weight_decays: Sequence[float] = (0, 1e-5, 1e-4, 1e-3, 1e-2),
    max_iter: int = 200,
    device: str | torch.device | None = None,
) -> dict:
    """Linear-probe test accuracy with the weight decay chosen on a validation split of train.

    1. Drop unlabeled (-1) rows; carve a stratified validation split (``val_fraction``, ``seed``)
       from the training rows.
    2. For each weight decay: standardize with the remaining training rows' statistics, fit
       :func:`fit_logistic_regression`, measure validation accuracy. The best wins (ties go to the
       larger weight decay, i.e. the simpler model). Test labels are never looked at here.
    3. Standardize with the full training split, refit with the chosen weight decay, score once
       on test.
    """
    weight_decays = [float(w) for w in weight_decays]
    if not weight_decays or any(w < 0 for w in weight_decays):
        raise ConfigError(
            f"weight_decays must be a non-empty list of values >= 0, got {weight_decays}."
        )
    train_x, train_y = labeled_only(train_x, train_y, "training", min_classes=2)
    test_x, test_y = labeled_only(test_x, test_y, "test")
    k = resolve_num_classes(num_classes, train_y, test_y)
    dev = resolve_device(device)

    tr_idx, va_idx = split_train_val(train_y, val_fraction, seed)
    sub_x, val_x = standardize(train_x[tr_idx], train_x[va_idx])
    sub_y, val_y = train_y[tr_idx], train_y[va_idx]
    val_accs: dict[str, float] = {}
    best_wd, best_acc = weight_decays[0], -1.0
    for wd in weight_decays:
        w, b = fit_logistic_regression(sub_x, sub_y, k, wd, max_iter, dev)
        acc = accuracy(predict(val_x, w, b), val_y)
        val_accs[repr(wd)] = acc
        if acc > best_acc or (acc == best_acc and wd > best_wd):
            best_wd, best_acc = wd, acc

    full_x, tst_x = standardize(train_x, test_x)
    w, b = fit_logistic_regression(full_x, train_y, k, best_wd, max_iter, dev)
    return {
        "probe": "linear",
        "accuracy": accuracy(predict(tst_x, w, b), test_y),
        "val_accuracy": best_acc,
        "weight_decay": best_wd,
        "train_accuracy": accuracy(predict(full_x, w, b), train_y),
        "val_accuracies": val_accs,
        "n_train": int(train_y.numel()),
        "n_val": int(va_idx.numel()),
        "n_test": int(test_y.numel()),
        "num_classes": k,
        "max_iter": int(max_iter),
    }
