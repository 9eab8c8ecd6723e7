"""The fixed-epoch SGD linear-evaluation protocol against scikit-learn and its own definition."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from selfsup.errors import ConfigError
from selfsup.evaluate.linear_protocol import linear_protocol_probe


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 0.4):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=gen) * spread
    y = torch.arange(n) % k
    return centers[y] + torch.randn(n, d, generator=gen), y


def test_matches_sklearn_logistic_regression_accuracy():
    x, y = _blobs(1200, 16, 4, 0)
    tx, ty = _blobs(600, 16, 4, 0)  # same centers (same seed), fresh noise below
    tx = tx + 0.3 * torch.randn(tx.shape, generator=torch.Generator().manual_seed(9))
    result = linear_protocol_probe(x, y, tx, ty, epochs=30, batch_size=64, base_lr=0.4)
    reference = LogisticRegression(max_iter=2000).fit(x.numpy(), y.numpy())
    ref_acc = float((reference.predict(tx.numpy()) == ty.numpy()).mean())
    assert 0.5 < ref_acc < 0.999  # a problem that is neither trivial nor hopeless
    assert abs(result["accuracy"] - ref_acc) <= 0.02
    assert result["epochs"] == 30 and result["n_train"] == 1200


def test_learning_rate_scales_by_batch_without_truncation_and_is_deterministic():
    x, y = _blobs(300, 8, 3, 1)
    a = linear_protocol_probe(x, y, x, y, epochs=2, batch_size=128, base_lr=0.1)
    assert math.isclose(a["lr"], 0.05)  # int(128 / 256) * 0.1 would be 0 (the AAVAE bug)
    b = linear_protocol_probe(x, y, x, y, epochs=2, batch_size=128, base_lr=0.1)
    assert a == b
    c = linear_protocol_probe(x, y, x, y, epochs=2, batch_size=128, base_lr=0.1, optimizer="adam")
    assert c["optimizer"] == "adam" and c["protocol"] == "adam-2-epochs"


def test_unlabeled_rows_are_ignored_and_bad_values_rejected():
    x, y = _blobs(200, 4, 2, 2)
    y_with_unlabeled = y.clone()
    y_with_unlabeled[:50] = -1
    result = linear_protocol_probe(x, y_with_unlabeled, x, y, epochs=1)
    assert result["n_train"] == 150
    for kwargs in ({"epochs": 0}, {"base_lr": -1.0}, {"optimizer": "lbfgs"}):
        with pytest.raises(ConfigError):
            linear_protocol_probe(x, y, x, y, **kwargs)
