"""Clustering quality of frozen features with a Gaussian mixture.

A ``GaussianMixture`` (scikit-learn, EM with ``n_init`` restarts) is fit on the **training**
features, standardized with the training statistics; each **test** sample (standardized with the
same statistics) is assigned its most probable component, like every other probe: fit on train,
scored once on test. (This is also what SimVAE's released, disabled, clustering code does:
src/model/models.py:79-96 fits on the training features and predicts the test ones.) Called with
one set of features only, the mixture is fit and scored on that set. Against the labels we
report

* cluster accuracy ``max_m (1/n) sum_i [m(c_i) = y_i]`` over one-to-one maps ``m`` from clusters
  to classes (Hungarian algorithm on the contingency table; unmatched clusters count as errors),
* normalised mutual information ``NMI = I(C; Y) / mean(H(C), H(Y))`` (arithmetic mean),
* adjusted Rand index (ARI).

Unlabeled (-1) samples take part in the fit but not in the scores. ``n_components`` defaults to
the number of classes.
"""

from __future__ import annotations

import numpy as np
import torch

from selfsup.errors import ConfigError
from selfsup.evaluate.features import labeled_only, standardize

__all__ = ["cluster_accuracy", "gmm_clustering"]


def cluster_accuracy(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> float:
    """Best one-to-one cluster-to-class matching accuracy (Hungarian algorithm).

    With contingency counts ``M[c, y] = #{i: pred_i = c, true_i = y}`` this is
    ``max over assignments A of sum_{(c, y) in A} M[c, y] / n``.
    """
    from scipy.optimize import linear_sum_assignment

    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length.")
    if y_true.size == 0:
        return 0.0
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.size)


def gmm_clustering(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    *,
    n_components: int | None = None,
    n_init: int = 20,
    seed: int = 0,
    covariance_type: str = "diag",
    max_iter: int = 100,
) -> dict:
    """Fit a GMM on standardized ``train_x`` and score its hard assignments of ``test_x``.

    Without ``test_x``/``test_y`` the training features are scored (fit and score on one set).
    ``n_components`` defaults to the number of distinct labels; ``covariance_type`` is ``"diag"``
    or ``"full"``; ``seed`` fixes the k-means initialisations of the ``n_init`` EM restarts.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.mixture import GaussianMixture

    if covariance_type not in ("diag", "full"):
        raise ConfigError(
            f"covariance_type must be 'diag' or 'full', got {covariance_type!r}. 'diag' is the "
            "default and scales to high-dimensional features."
        )
    if n_init < 1:
        raise ConfigError(f"n_init must be a positive integer, got {n_init}.")
    if (test_x is None) != (test_y is None):
        raise ConfigError("Pass both test_x and test_y, or neither (fit and score on train).")
    fit_on = "train" if test_x is None else "train, scored on test"
    x = torch.as_tensor(train_x)
    y = torch.as_tensor(train_y).long()
    tx = x if test_x is None else torch.as_tensor(test_x)
    ty = y if test_y is None else torch.as_tensor(test_y).long()
    _, labels = labeled_only(tx, ty, "evaluation")
    keep = (ty >= 0).numpy()
    classes = torch.unique(torch.cat([y[y >= 0], labels]))
    k = int(classes.numel()) if n_components is None else int(n_components)
    if k < 1 or k > x.shape[0]:
        raise ConfigError(
            f"n_components must be between 1 and the number of samples ({x.shape[0]}), got {k}."
        )
    z, tz = standardize(x.double(), tx.double())
    gmm = GaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        n_init=n_init,
        max_iter=max_iter,
        random_state=seed,
    )
    gmm.fit(z.numpy())
    pred = gmm.predict(tz.numpy())[keep]
    truth = labels.numpy()
    return {
        "probe": "gmm",
        "cluster_accuracy": cluster_accuracy(truth, pred),
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "ari": float(adjusted_rand_score(truth, pred)),
        "n_components": k,
        "covariance_type": covariance_type,
        "n_init": int(n_init),
        "converged": bool(gmm.converged_),
        "fit_on": fit_on,
        "n_fit": int(x.shape[0]),
        "n_samples": int(truth.size),
    }
