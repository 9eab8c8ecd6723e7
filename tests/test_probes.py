"""Frozen-feature probes checked against independent references (sklearn, numpy, brute force)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier

from selfsup.errors import ConfigError, DataError, RunError
from selfsup.evaluate import (
    cluster_accuracy,
    extract_features,
    fit_logistic_regression,
    gmm_clustering,
    knn_predict,
    knn_probe,
    linear_probe,
    mlp_probe,
    predict,
    predict_proba,
    split_train_val,
    standardize,
)

# ----------------------------------------------------------------------------- data


def _classification(n_train: int = 400, n_test: int = 200, dim: int = 20, classes: int = 4):
    """A multi-class problem that is not linearly separable (label noise, overlapping classes)."""
    x, y = make_classification(
        n_samples=n_train + n_test,
        n_features=dim,
        n_informative=8,
        n_redundant=4,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=1.0,
        flip_y=0.05,
        random_state=0,
    )
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _xor(n: int, dim: int = 10, seed: int = 0):
    """Label = sign(x0 * x1): no linear direction carries information, an MLP separates it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return x, y


# ----------------------------------------------------------------------------- helpers


def test_standardize_uses_train_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 4, generator=g) * 3 + 5
    train[:, 2] = 7.0  # constant feature: std floored, no division by zero
    test = torch.randn(20, 4, generator=g)
    z_train, z_test = standardize(train, test)
    assert torch.isfinite(z_train).all() and torch.isfinite(z_test).all()
    keep = [0, 1, 3]
    assert torch.allclose(z_train[:, keep].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z_train[:, keep].std(0, unbiased=False), torch.ones(3), atol=1e-5)
    assert torch.all(z_train[:, 2] == 0)
    mean, std = train.double().mean(0), train.double().std(0, unbiased=False).clamp_min(1e-6)
    assert torch.allclose(z_test.double(), (test.double() - mean) / std, atol=1e-4)
    assert z_test.dtype == torch.float32


def test_split_train_val_is_seeded_stratified_and_disjoint() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = split_train_val(y, 0.2, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert torch.bincount(y[va], minlength=3).tolist() == [10, 6, 4]
    tr2, va2 = split_train_val(y, 0.2, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, split_train_val(y, 0.2, seed=4)[1])
    # Every class keeps a training sample, even a class with two samples.
    tr, va = split_train_val(torch.tensor([0, 0, 1, 1, 1, 1]), 0.5, seed=0)
    assert set(torch.tensor([0, 0, 1, 1, 1, 1])[tr].tolist()) == {0, 1}
    with pytest.raises(ConfigError):
        split_train_val(y, 0.0, seed=0)
    with pytest.raises(ConfigError):
        split_train_val(y, 1.0, seed=0)


# ----------------------------------------------------------------------------- features


@dataclass
class _MemDataset:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class _MapDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _represent(batch: torch.Tensor) -> torch.Tensor:
    assert batch.dtype == torch.uint8 and batch.ndim == 4
    assert not torch.is_grad_enabled()
    # (B, C, 2, 2): flattened by extract_features to (B, 4C).
    return torch.nn.functional.avg_pool2d(batch.double(), kernel_size=4)


@pytest.mark.parametrize("kind", ["memory", "map"])
def test_extract_features_both_dataset_kinds(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 5, (37,), generator=g)
    labels[3] = -1
    if kind == "memory":
        ds = _MemDataset(images=images, labels=labels)
    else:
        ds = _MapDataset(images, labels)
    x, y = extract_features(_represent, ds, batch_size=10)
    assert x.shape == (37, 12) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (37,) and y.dtype == torch.int64
    assert torch.equal(y, labels)
    ref = torch.nn.functional.avg_pool2d(images.double(), 4).reshape(37, -1).float()
    assert torch.allclose(x, ref)


def test_extract_features_rejects_nan_and_empty() -> None:
    images = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    ds = _MapDataset(images, torch.zeros(4, dtype=torch.long))

    def bad(b: torch.Tensor) -> torch.Tensor:
        return torch.full((b.shape[0], 3), float("nan"))

    with pytest.raises(RunError, match="NaN"):
        extract_features(bad, ds)
    with pytest.raises(DataError, match="empty"):
        extract_features(_represent, _MapDataset(images[:0], torch.zeros(0, dtype=torch.long)))


def test_probes_need_labels() -> None:
    x = torch.randn(30, 5)
    unlabeled = torch.full((30,), -1)
    one_class = torch.zeros(30, dtype=torch.long)
    labeled = torch.arange(30) % 3
    for train_y in (unlabeled, one_class):
        with pytest.raises(DataError, match="labeled dataset"):
            linear_probe(x, train_y, x, labeled, device="cpu")
        with pytest.raises(DataError, match="labeled dataset"):
            mlp_probe(x, train_y, x, labeled, epochs=1, device="cpu")
    with pytest.raises(DataError, match="labeled dataset"):
        linear_probe(x, labeled, x, unlabeled, device="cpu")
    with pytest.raises(DataError, match="labeled dataset"):
        knn_probe(x, unlabeled, x, labeled, device="cpu")
    with pytest.raises(DataError, match="labeled dataset"):
        gmm_clustering(x, unlabeled, n_init=1)
    with pytest.raises(DataError, match="out of range"):
        linear_probe(x, labeled, x, labeled, num_classes=2, device="cpu")


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    ("dtype", "prob_atol", "weight_atol"),
    [(torch.float64, 1e-4, 1e-3), (torch.float32, 3e-3, 3e-3)],
)
def test_logistic_regression_matches_sklearn(
    dtype: torch.dtype, prob_atol: float, weight_atol: float
) -> None:
    xtr, ytr, xte, _ = _classification()
    ztr, zte = standardize(xtr.to(dtype), xte.to(dtype))
    for wd in (1e-2, 1e-3):
        w, b = fit_logistic_regression(ztr, ytr, 4, wd, max_iter=500, device="cpu")
        ref = LogisticRegression(C=1.0 / (wd * len(ytr)), tol=1e-12, max_iter=100_000)
        ref.fit(ztr.double().numpy(), ytr.numpy())
        ours = predict(zte, w, b).numpy()
        theirs = ref.predict(zte.double().numpy())
        assert (ours == theirs).mean() >= 0.99
        np.testing.assert_allclose(
            predict_proba(zte, w, b).double().numpy(),
            ref.predict_proba(zte.double().numpy()),
            atol=prob_atol,
        )
        # Both parametrisations are softmax over K classes with the same penalty: same optimum.
        np.testing.assert_allclose(w.double().numpy(), ref.coef_, atol=weight_atol)
        # Bias is unpenalised, so it is only defined up to a constant shift across classes.
        db = b.double().numpy() - ref.intercept_
        np.testing.assert_allclose(db - db.mean(), 0.0, atol=weight_atol)


def test_linear_probe_selection_and_sklearn_accuracy() -> None:
    xtr, ytr, xte, yte = _classification()
    res = linear_probe(xtr, ytr, xte, yte, max_iter=300, device="cpu")
    json.dumps(res)
    assert res["probe"] == "linear" and res["n_train"] == 400 and res["n_test"] == 200
    assert res["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    assert res["val_accuracy"] == max(res["val_accuracies"].values())
    # Refit on the full train split with the chosen wd equals sklearn within one point.
    ztr, zte = standardize(xtr.double(), xte.double())
    c = 1.0 / (max(res["weight_decay"], 1e-8) * len(ytr))
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(ztr.numpy(), ytr.numpy())
    sk_acc = float((ref.predict(zte.numpy()) == yte.numpy()).mean())
    assert abs(res["accuracy"] - sk_acc) <= 0.01
    assert res["accuracy"] > 0.5  # four classes: chance is 0.25

    # Test labels and test features never influence the selection.
    g = torch.Generator().manual_seed(1)
    shuffled = yte[torch.randperm(len(yte), generator=g)]
    res2 = linear_probe(xtr, ytr, torch.randn_like(xte), shuffled, max_iter=300, device="cpu")
    assert res2["weight_decay"] == res["weight_decay"]
    assert res2["val_accuracies"] == res["val_accuracies"]
    assert res2["train_accuracy"] == res["train_accuracy"]


def test_linear_probe_ignores_unlabeled_rows() -> None:
    xtr, ytr, xte, yte = _classification(n_train=200, n_test=100)
    wds = (1e-3, 1e-2)
    base = linear_probe(xtr, ytr, xte, yte, weight_decays=wds, device="cpu")
    extra = torch.randn(30, xtr.shape[1]) * 50
    res = linear_probe(
        torch.cat([xtr, extra]),
        torch.cat([ytr, torch.full((30,), -1)]),
        torch.cat([xte, extra]),
        torch.cat([yte, torch.full((30,), -1)]),
        weight_decays=wds,
        device="cpu",
    )
    assert res["n_train"] == 200 and res["n_test"] == 100
    assert res["weight_decay"] == base["weight_decay"]
    assert res["accuracy"] == pytest.approx(base["accuracy"])


# ----------------------------------------------------------------------------- kNN


def _knn_numpy(train_x, train_y, test_x, k, temperature, num_classes):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    q = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = q @ a.T
    out = []
    for row in sim:
        nn_idx = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, train_y[nn_idx], np.exp(row[nn_idx] / temperature))
        out.append(int(np.argmax(votes)))
    return np.array(out)


def test_knn_matches_numpy_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16))
    train_y = rng.integers(0, 5, size=300)
    test_y = rng.integers(0, 5, size=120)
    train_x = centers[train_y] + 1.5 * rng.normal(size=(300, 16))
    test_x = centers[test_y] + 1.5 * rng.normal(size=(120, 16))
    t = 0.1
    preds = knn_predict(
        torch.tensor(train_x),
        torch.tensor(train_y),
        torch.tensor(test_x),
        [1, 7, 20, 300],
        num_classes=5,
        temperature=t,
        batch_size=16,
        device="cpu",
    )
    for k in (1, 7, 20, 300):
        ref = _knn_numpy(train_x, train_y, test_x, k, t, 5)
        np.testing.assert_array_equal(preds[k].numpy(), ref)
        sk = KNeighborsClassifier(
            n_neighbors=k,
            metric="cosine",
            algorithm="brute",
            weights=lambda d: np.exp((1.0 - d) / t),
        ).fit(train_x, train_y)
        np.testing.assert_array_equal(preds[k].numpy(), sk.predict(test_x))
    # float32 features (the usual case) give the same predictions on tie-free data.
    p32 = knn_predict(
        torch.tensor(train_x, dtype=torch.float32),
        torch.tensor(train_y),
        torch.tensor(test_x, dtype=torch.float32),
        [20],
        num_classes=5,
        temperature=t,
        device="cpu",
    )
    assert (p32[20] == preds[20]).float().mean() >= 0.99

    res = knn_probe(
        torch.tensor(train_x, dtype=torch.float32),
        torch.tensor(train_y),
        torch.tensor(test_x, dtype=torch.float32),
        torch.tensor(test_y),
        ks=(20, 1000),
        temperature=t,
        batch_size=50,
        device="cpu",
    )
    json.dumps(res)
    assert res["k_used"] == {"20": 20, "1000": 300}  # k clipped to n_train
    acc20 = float((_knn_numpy(train_x, train_y, test_x, 20, t, 5) == test_y).mean())
    acc_all = float((_knn_numpy(train_x, train_y, test_x, 300, t, 5) == test_y).mean())
    assert res["accuracy"] == pytest.approx(acc20, abs=1.5 / 120)
    assert res["accuracy_k20"] == res["accuracy"]
    assert res["accuracy_k1000"] == pytest.approx(acc_all, abs=1.5 / 120)
    assert res["temperature"] == t and res["probe"] == "knn"


def test_knn_small_temperature_does_not_overflow() -> None:
    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(80, 8)), rng.normal(size=(30, 8))
    train_y = rng.integers(0, 3, size=80)
    t = 0.002  # exp(1 / t) overflows float64 without the max-shift
    preds = knn_predict(
        torch.tensor(train_x),
        torch.tensor(train_y),
        torch.tensor(test_x),
        [10],
        num_classes=3,
        temperature=t,
        device="cpu",
    )
    # With such a small T the nearest neighbour dominates the vote.
    np.testing.assert_array_equal(
        preds[10].numpy(), _knn_numpy(train_x, train_y, test_x, 1, 1.0, 3)
    )


# ----------------------------------------------------------------------------- MLP


def test_mlp_solves_xor_where_linear_is_chance() -> None:
    xtr, ytr = _xor(800, seed=0)
    xte, yte = _xor(400, seed=1)
    lin = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3,), device="cpu")
    assert lin["accuracy"] < 0.65
    opts = {"hidden": 64, "epochs": 25, "batch_size": 64, "lr": 3e-3, "device": "cpu"}
    rng_before = torch.get_rng_state()
    res = mlp_probe(xtr, ytr, xte, yte, **opts)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    json.dumps(res)
    assert res["probe"] == "mlp" and 1 <= res["epochs"] <= 25
    assert res["accuracy"] > 0.85 and res["val_accuracy"] > 0.85
    # Deterministic with a seed; test labels do not influence the chosen epoch count.
    g = torch.Generator().manual_seed(5)
    res2 = mlp_probe(xtr, ytr, xte, yte[torch.randperm(len(yte), generator=g)], **opts)
    assert res2["epochs"] == res["epochs"]
    assert res2["val_accuracy"] == res["val_accuracy"]
    assert res2["train_accuracy"] == res["train_accuracy"]
    res3 = mlp_probe(xtr, ytr, xte, yte, **opts)
    assert res3 == res


# ----------------------------------------------------------------------------- GMM


def _brute_force_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    size = max(len(classes), len(clusters))
    best = 0
    for perm in itertools.permutations(range(size)):
        hits = 0
        for ci, cl in enumerate(clusters):
            if perm[ci] < len(classes):
                hits += int(np.sum((y_pred == cl) & (y_true == classes[perm[ci]])))
        best = max(best, hits)
    return best / len(y_true)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 4)),
        min_size=1,
        max_size=25,
    )
)
def test_cluster_accuracy_equals_brute_force(pairs: list[tuple[int, int]]) -> None:
    y_true = np.array([p[0] for p in pairs])
    y_pred = np.array([p[1] for p in pairs]) * 10 + 3  # arbitrary cluster ids
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(_brute_force_accuracy(y_true, y_pred))


def test_gmm_perfect_and_matches_sklearn_metrics() -> None:
    x, y = make_blobs(
        n_samples=240,
        n_features=10,
        centers=4,
        cluster_std=0.3,
        center_box=(-20, 20),
        random_state=0,
    )
    perm = np.array([2, 0, 3, 1])
    res = gmm_clustering(torch.tensor(x, dtype=torch.float32), torch.tensor(perm[y]), n_init=3)
    json.dumps(res)
    assert res["probe"] == "gmm" and res["n_components"] == 4
    assert res["cluster_accuracy"] == 1.0
    assert res["nmi"] == pytest.approx(1.0) and res["ari"] == pytest.approx(1.0)

    # Overlapping blobs, plus unlabeled rows that take part in the fit but not in the score.
    x, y = make_blobs(n_samples=300, n_features=6, centers=3, cluster_std=3.0, random_state=1)
    y_with_unlabeled = y.copy()
    y_with_unlabeled[:20] = -1
    res = gmm_clustering(
        torch.tensor(x), torch.tensor(y_with_unlabeled), n_init=4, seed=2, covariance_type="full"
    )
    z = (x - x.mean(0)) / x.std(0)
    pred = GaussianMixture(3, covariance_type="full", n_init=4, random_state=2).fit_predict(z)
    pred, truth = pred[20:], y[20:]
    assert res["n_samples"] == 280
    assert res["cluster_accuracy"] == pytest.approx(_brute_force_accuracy(truth, pred))
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pred), abs=1e-9)
    assert res["ari"] == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-9)
    assert 0.4 < res["cluster_accuracy"] < 1.0
    with pytest.raises(ConfigError):
        gmm_clustering(torch.tensor(x), torch.tensor(y), covariance_type="spherical")
