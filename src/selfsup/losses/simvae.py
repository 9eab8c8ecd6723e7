"""SimVAE objective (ELBO_SSL, Bizeul et al., arXiv 2402.01399) and its augmented-VAE baseline.

Generative model: for each sample i a content latent y_i ~ p(y); each of its J augmented views has a
latent z_ij ~ N(y_i, var_z_y I) and an image x_ij ~ p(x | z_ij). Integrating y out in closed form
is replaced (as in the released code) by plugging in the view mean zbar_i = 1/J sum_j z_ij.

Batch layout (SAMPLE-MAJOR): ``z``, ``mu``, ``logvar``, ``x`` and the decoder output have N*J rows
ordered [s0v0, s0v1, ..., s0v(J-1), s1v0, ...], so ``z.view(N, J, d)`` groups the J views of one
sample. All returned terms are per **sample** (shape (N,)), summed over the sample's J views.

Per sample i (single reparameterised draw z_ij ~ q(z | x_ij)):

* reconstruction_i = sum_j -log p(x_ij | z_ij) with constants dropped, as in the released code:
  Gaussian: 1/2 sum (x - x_hat)^2 / e^log_var_x; Bernoulli: sum BCE(logits, x). The released code
  also divides the BCE by e^log_var_x; ``bce_scaled_by_var=True`` reproduces that. (The released
  code decodes ``sigmoid(decoder(z))`` as the Gaussian mean; here the mean is whatever is passed
  as ``decoder_out`` - apply the sigmoid in the caller to reproduce it.)
* entropy_i = w * sum_j sum_d logvar_ijd. The Gaussian entropy is 1/2 sum logvar + const, so the
  correct weight is w = 1/2 ("paper"); the released code computes ``0.5 * sum(2 * pi * logvar)``,
  i.e. w = pi ("released"), most likely a typo; it is offered for reproduction.
* prior_i = sum_d [-1/2 sum_j (z_ijd - zbar_id)^2 / var_z_y + log p(zbar_id)], with
  log p(y) = -1/2 y^2 ("gaussian", default) or 0 ("uniform"; the released code adds the constant
  log(num_data) instead, which has no gradient).
* loss_i = reconstruction_i - entropy_i - prior_i (a negative ELBO up to additive constants).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.vae import (
    check_likelihood,
    check_same_shape,
    gaussian_kl_standard,
    per_sample_sum,
)

ENTROPY_WEIGHTS: dict[str, float] = {"paper": 0.5, "released": math.pi}
P_Y_PRIORS: tuple[str, ...] = ("gaussian", "uniform")
KL_ESTIMATORS: tuple[str, ...] = ("sampled", "analytic")


def resolve_entropy_weight(entropy_weight: str | float) -> float:
    """Map ``"paper"`` -> 0.5, ``"released"`` -> pi; a number is used as is."""
    if isinstance(entropy_weight, str):
        if entropy_weight not in ENTROPY_WEIGHTS:
            raise ConfigError(
                f"Unknown entropy_weight {entropy_weight!r}: expected 'paper' (0.5, the Gaussian "
                "entropy 1/2 sum log sigma^2), 'released' (pi, reproducing the released SimVAE "
                "code) or a number."
            )
        return ENTROPY_WEIGHTS[entropy_weight]
    value = float(entropy_weight)
    if not math.isfinite(value):
        raise ConfigError(f"entropy_weight must be finite, got {entropy_weight}.")
    return value


def _check_views(n_rows: int, n_views: int) -> int:
    """Validate the view count and return the number of samples N = rows / J."""
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 2:
        raise ConfigError(
            f"n_views must be an integer >= 2, got {n_views!r}. SimVAE groups several augmented "
            "views of each sample under one content latent; with a single view there is nothing "
            "to group (use a plain VAE instead)."
        )
    if n_rows % n_views != 0:
        raise ValueError(
            f"The batch has {n_rows} rows, which is not a multiple of n_views={n_views}. Rows must "
            "be laid out sample-major (all views of sample 0, then all views of sample 1, ...)."
        )
    return n_rows // n_views


def view_reconstruction(
    x: Tensor,
    decoder_out: Tensor,
    likelihood: str,
    log_var_x: float = -4.6,
    bce_scaled_by_var: bool = False,
) -> Tensor:
    """Per-row reconstruction term with constants dropped (released-code convention), (N*J,).

    Gaussian: 1/2 sum (x - x_hat)^2 / e^log_var_x. Bernoulli: sum BCE(logits, x), divided by
    e^log_var_x only when ``bce_scaled_by_var`` is set.
    """
    check_likelihood(likelihood)
    check_same_shape(decoder_out, x, "decoder_out", "x")
    scale = math.exp(-float(log_var_x))
    if likelihood == "gaussian":
        return 0.5 * scale * per_sample_sum((x - decoder_out).pow(2))
    bce = per_sample_sum(
        torch.nn.functional.binary_cross_entropy_with_logits(decoder_out, x, reduction="none")
    )
    return bce * scale if bce_scaled_by_var else bce


def _check_latents(z: Tensor, mu: Tensor, logvar: Tensor, x: Tensor) -> None:
    check_same_shape(mu, logvar, "mu", "logvar")
    check_same_shape(z, mu, "z", "mu")
    if z.ndim != 2:
        raise ValueError(f"latents must be (N*J, d), got shape {tuple(z.shape)}.")
    if x.shape[0] != z.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} rows but z has {z.shape[0]}; every view needs one latent."
        )


def simvae_loss(
    x: Tensor,
    decoder_out: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_views: int,
    *,
    likelihood: str,
    var_z_y: float = 0.15,
    log_var_x: float = -4.6,
    entropy_weight: str | float = "paper",
    p_y_prior: str = "gaussian",
    bce_scaled_by_var: bool = False,
) -> dict[str, Tensor]:
    """SimVAE loss per sample (see module docstring for the formulas).

    Inputs have N*J rows in sample-major order; returns ``{"loss", "reconstruction", "entropy",
    "prior"}``, each of shape (N,), with loss = reconstruction - entropy - prior.
    """
    n = _check_views(z.shape[0] if z.ndim else 0, n_views)
    _check_latents(z, mu, logvar, x)
    if not (isinstance(var_z_y, (int, float)) and math.isfinite(var_z_y) and var_z_y > 0):
        raise ConfigError(
            f"var_z_y must be a positive number, got {var_z_y!r}. It is the variance of each "
            "view's latent around its sample's content latent (0.15 in the SimVAE paper)."
        )
    if p_y_prior not in P_Y_PRIORS:
        raise ConfigError(
            f"Unknown p_y_prior {p_y_prior!r}: expected 'gaussian' (log p(y) = -y^2 / 2) or "
            "'uniform' (log p(y) = 0)."
        )
    w = resolve_entropy_weight(entropy_weight)
    d = z.shape[1]

    rec = view_reconstruction(x, decoder_out, likelihood, log_var_x, bce_scaled_by_var)
    rec = rec.view(n, n_views).sum(dim=1)
    entropy = w * logvar.view(n, n_views, d).sum(dim=(1, 2))

    zg = z.view(n, n_views, d)
    zbar = zg.mean(dim=1, keepdim=True)  # (N, 1, d)
    log_p_z_given_y = -0.5 * (zg - zbar).pow(2).sum(dim=(1, 2)) / var_z_y
    if p_y_prior == "gaussian":
        log_p_y = -0.5 * zbar.pow(2).sum(dim=(1, 2))
    else:
        log_p_y = torch.zeros_like(log_p_z_given_y)
    prior = log_p_z_given_y + log_p_y

    return {
        "loss": rec - entropy - prior,
        "reconstruction": rec,
        "entropy": entropy,
        "prior": prior,
    }


def augmented_vae_loss(
    x: Tensor,
    decoder_out: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_views: int,
    *,
    likelihood: str,
    log_var_x: float = -4.6,
    entropy_weight: str | float = "paper",
    bce_scaled_by_var: bool = False,
    kl_estimator: str = "sampled",
) -> dict[str, Tensor]:
    """Augmented-VAE baseline: a standard-normal prior on every view, summed over a sample's views.

    Same inputs, layout and term names as :func:`simvae_loss` (only the prior differs), plus
    ``"kl"`` = sum_j KL(q(z|x_ij) || N(0, I)) analytically, as a diagnostic. Per sample i:

    * reconstruction_i, entropy_i: exactly as in :func:`simvae_loss`;
    * prior_i = sum_j sum_d -1/2 (z_ijd^2 - 1) for ``kl_estimator="sampled"`` (the released
      baseline's Monte-Carlo log N(z; 0, I), constants shifted), or its expectation under q,
      -1/2 sum (mu^2 + e^logvar - 1), for ``"analytic"``;
    * loss_i = reconstruction_i - entropy_i - prior_i.

    The constants are chosen so that with ``entropy_weight="paper"`` and ``"analytic"``,
    -entropy - prior equals the KL exactly: the loss is then sum_j [reconstruction_ij + KL_ij],
    the sum of the J per-view VAE losses (with this module's reconstruction convention), and the
    "sampled" loss is an unbiased single-sample estimate of it.
    """
    n = _check_views(z.shape[0] if z.ndim else 0, n_views)
    _check_latents(z, mu, logvar, x)
    if kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(
            f"Unknown kl_estimator {kl_estimator!r}: expected 'sampled' (single-sample Monte "
            "Carlo, as in the released code) or 'analytic' (closed-form Gaussian expectation)."
        )
    w = resolve_entropy_weight(entropy_weight)

    rec = view_reconstruction(x, decoder_out, likelihood, log_var_x, bce_scaled_by_var)
    rec = rec.view(n, n_views).sum(dim=1)
    entropy = w * per_sample_sum(logvar).view(n, n_views).sum(dim=1)
    if kl_estimator == "sampled":
        prior_rows = -0.5 * per_sample_sum(z.pow(2) - 1.0)
    else:
        prior_rows = -0.5 * per_sample_sum(mu.pow(2) + logvar.exp() - 1.0)
    prior = prior_rows.view(n, n_views).sum(dim=1)
    kl = gaussian_kl_standard(mu, logvar).view(n, n_views).sum(dim=1)
    return {
        "loss": rec - entropy - prior,
        "reconstruction": rec,
        "entropy": entropy,
        "prior": prior,
        "kl": kl,
    }
