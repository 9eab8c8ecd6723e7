"""Frozen-feature evaluation: feature extraction, linear / MLP / kNN probes, GMM clustering.

Every probe works on feature tensors only, selects its hyperparameters on a seeded validation split
carved from the training split (never on test), and returns a JSON-serialisable dict.
"""

from selfsup.evaluate.features import extract_features, split_train_val, standardize
from selfsup.evaluate.gmm import cluster_accuracy, gmm_clustering
from selfsup.evaluate.knn import knn_predict, knn_probe
from selfsup.evaluate.linear import fit_logistic_regression, linear_probe, predict, predict_proba
from selfsup.evaluate.mlp import mlp_probe

__all__ = [
    "cluster_accuracy",
    "extract_features",
    "fit_logistic_regression",
    "gmm_clustering",
    "knn_predict",
    "knn_probe",
    "linear_probe",
    "mlp_probe",
    "predict",
    "predict_proba",
    "split_train_val",
    "standardize",
]
