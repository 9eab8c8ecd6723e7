"""Weighted k-nearest-neighbour probe on cosine similarity (the InstDisc / solo-learn protocol).

Features are L2-normalised, so the similarity of a test point ``q`` to a training point ``x_j`` is
``s_j = <q, x_j>`` (cosine). Among the ``k`` most similar training points ``N_k(q)`` each votes
for its class with weight ``exp(s_j / T)``; the prediction is ``argmax_c sum_{j in N_k(q), y_j = c}
exp(s_j / T)``. Weights are computed as ``exp((s_j - max_j s_j) / T)``, which scales every vote
of one query by the same factor (same prediction, no overflow for small ``T``). Test points are
processed in batches so memory stays at (batch, n_train) similarities. There is no hyperparameter
selection: ``ks`` and ``T`` are fixed by the protocol and every ``k`` is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.evaluate.features import accuracy, labeled_only, resolve_device, resolve_num_classes

__all__ = ["knn_predict", "knn_probe"]


@torch.no_grad()
def knn_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    query_x: torch.Tensor,
    ks: Sequence[int],
    *,
    num_classes: int,
    temperature: float = 0.1,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[int, torch.Tensor]:
    """Weighted-kNN predictions (CPU int64 (M,)) for every ``k`` in ``ks`` (each <= n_train).

    Computes in float64 when the features are float64, else float32.
    """
    dev = resolve_device(device)
    dtype = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    bank = F.normalize(train_x.to(dev, dtype), dim=1)
    bank_y = train_y.to(dev).long()
    k_max = max(ks)
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, query_x.shape[0], batch_size):
        q = F.normalize(query_x[start : start + batch_size].to(dev, dtype), dim=1)
        sim, idx = (q @ bank.t()).topk(k_max, dim=1)  # sorted, most similar first
        weights = torch.exp((sim - sim[:, :1]) / temperature)
        labels = bank_y[idx]
        for k in ks:
            votes = torch.zeros(q.shape[0], num_classes, device=dev, dtype=dtype)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            preds[k].append(votes.argmax(dim=1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in preds.items()}


def knn_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.1,
    batch_size: int = 1024,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Weighted cosine kNN test accuracy for every ``k`` in ``ks``.

    Each ``k`` is clipped to the number of labeled training samples; results are keyed by the
    requested ``k`` (``accuracy_k20`` ...), with ``accuracy`` = the first ``k``'s accuracy and
    ``k_used`` giving the clipped values.
    """
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"ks must be a non-empty list of positive integers, got {ks}.")
    if not temperature > 0:
        raise ConfigError(f"The kNN temperature must be > 0, got {temperature}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    train_x, train_y = labeled_only(train_x, train_y, "training")
    test_x, test_y = labeled_only(test_x, test_y, "test")
    n_cls = resolve_num_classes(num_classes, train_y, test_y)
    used = {k: min(k, int(train_y.numel())) for k in ks}
    preds = knn_predict(
        train_x,
        train_y,
        test_x,
        sorted(set(used.values())),
        num_classes=n_cls,
        temperature=temperature,
        batch_size=batch_size,
        device=device,
    )
    out: dict = {"probe": "knn"}
    accs = {k: accuracy(preds[used[k]], test_y) for k in ks}
    out["accuracy"] = accs[ks[0]]
    for k in ks:
        out[f"accuracy_k{k}"] = accs[k]
    out.update(
        {
            "k": ks[0],
            "k_used": {str(k): used[k] for k in ks},
            "temperature": float(temperature),
            "n_train": int(train_y.numel()),
            "n_test": int(test_y.numel()),
            "num_classes": n_cls,
        }
    )
    return out
