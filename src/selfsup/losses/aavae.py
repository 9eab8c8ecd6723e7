"""AAVAE objective (Augmentation-Augmented VAE, Falcon et al., arXiv 2107.12329) and diagnostics.

AAVAE encodes an augmented view, decodes, and scores the reconstruction against the *clean*
(un-augmented) image under a Gaussian likelihood; the KL term is usually switched off
(``kl_coeff = 0``), so the model is a denoising auto-encoder with a stochastic bottleneck.

``log_scale`` follows the released code: it is a **log-variance** (despite the name), and the
decoder standard deviation is sigma_x = exp(log_scale / 2) + 1e-6; the posterior standard
deviation is likewise std = exp(logvar / 2) + 1e-6. All terms are per sample, shape (N,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.vae import (
    LOG_2PI,
    check_same_shape,
    gaussian_kl,
    per_sample_sum,
    scalar_like,
)

STD_EPS: float = 1e-6


def _std_from_logvar(logvar: Tensor | float, like: Tensor) -> Tensor:
    """sigma = exp(logvar / 2) + 1e-6 (the released code's parameterisation)."""
    lv = scalar_like(logvar, like)
    return torch.exp(0.5 * lv) + STD_EPS


def _normal_log_prob(value: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log N(value; mean, std^2) = -log std - 1/2 log(2 pi) - (v - m)^2 / (2 std^2)."""
    return -torch.log(std) - 0.5 * LOG_2PI - 0.5 * ((value - mean) / std).pow(2)


def aavae_log_likelihood(x_clean: Tensor, x_hat: Tensor, log_scale: Tensor | float = 0.0) -> Tensor:
    """log p(x_clean | z) = sum log N(x_clean; x_hat, sigma_x^2), sigma_x = e^(log_scale/2)+1e-6."""
    check_same_shape(x_hat, x_clean, "x_hat", "x_clean")
    sigma = _std_from_logvar(log_scale, x_hat)
    per_elem = _normal_log_prob(x_clean, x_hat, sigma)
    if per_elem.shape != x_clean.shape:
        raise ValueError(
            f"log_scale of shape {tuple(sigma.shape)} does not broadcast to the image shape "
            f"{tuple(x_clean.shape)}; pass a float, a (C, H, W) or a (1, C, H, W) tensor."
        )
    return per_sample_sum(per_elem)


def aavae_loss(
    x_clean: Tensor,
    x_hat: Tensor,
    mu: Tensor,
    logvar: Tensor,
    z: Tensor,
    *,
    log_scale: Tensor | float = 0.0,
    kl_coeff: float = 0.0,
    kl_estimator: str = "analytic",
) -> dict[str, Tensor]:
    """AAVAE loss per sample: loss = kl_coeff * kl - log p(x_clean | z).

    log p(x_clean | z) = sum log N(x_clean; x_hat, sigma_x^2) with sigma_x = exp(log_scale/2)+1e-6.
    kl (std = exp(logvar/2) + 1e-6):

    * ``"analytic"``: sum_d [-log std + (std^2 + mu^2)/2 - 1/2] = KL(N(mu, std^2) || N(0, I));
    * ``"sampled"``: log q(z | x) - log N(z; 0, I) at the given sample ``z`` (unbiased estimate).

    Returns ``{"loss", "log_likelihood", "kl"}``, each of shape (N,).
    """
    check_same_shape(mu, logvar, "mu", "logvar")
    check_same_shape(z, mu, "z", "mu")
    if not math.isfinite(kl_coeff) or kl_coeff < 0:
        raise ConfigError(
            f"kl_coeff must be a finite non-negative number, got {kl_coeff}. AAVAE uses 0 (no KL "
            "term); a positive value adds kl_coeff * KL(q(z|x) || N(0, I))."
        )
    if kl_estimator not in ("analytic", "sampled"):
        raise ConfigError(
            f"Unknown kl_estimator {kl_estimator!r}: expected 'analytic' (closed form) or "
            "'sampled' (log q(z|x) - log p(z) at the drawn z)."
        )
    log_pxz = aavae_log_likelihood(x_clean, x_hat, log_scale)
    std = _std_from_logvar(logvar, mu)
    if kl_estimator == "analytic":
        kl = per_sample_sum(-torch.log(std) + 0.5 * (std.pow(2) + mu.pow(2)) - 0.5)
    else:
        log_qz = per_sample_sum(_normal_log_prob(z, mu, std))
        log_pz = per_sample_sum(-0.5 * LOG_2PI - 0.5 * z.pow(2))
        kl = log_qz - log_pz
    return {"loss": kl_coeff * kl - log_pxz, "log_likelihood": log_pxz, "kl": kl}


def importance_weighted_log_likelihood(
    x: Tensor,
    encode_fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    decode_fn: Callable[[Tensor], Tensor],
    n_samples: int,
    log_scale: Tensor | float = 0.0,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-weighted (IWAE) estimate of log p(x) per sample, shape (N,).

    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, z_k ~ q(z|x),
    with p(z) = N(0, I), q = N(mu, std^2) (std = exp(logvar/2) + 1e-6) from ``encode_fn(x)``, and
    p(x|z) = N(decode_fn(z), sigma_x^2) with sigma_x = exp(log_scale/2) + 1e-6. The estimate is a
    lower bound in expectation that increases with K and converges to log p(x). Samples are
    drawn as one ``torch.randn((k, N, ...))`` per chunk of ``chunk_size`` (default: all K at
    once), so K = 1 uses the same noise as ``torch.randn(mu.shape)`` with the same generator.
    Wrap the call in ``torch.no_grad()`` for evaluation.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    mu, logvar = encode_fn(x)
    check_same_shape(mu, logvar, "mu", "logvar")
    n = x.shape[0]
    std = _std_from_logvar(logvar, mu)
    chunk = n_samples if chunk_size is None else min(chunk_size, n_samples)
    log_ws: list[Tensor] = []
    done = 0
    while done < n_samples:
        k = min(chunk, n_samples - done)
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu.unsqueeze(0) + std.unsqueeze(0) * eps  # (k, N, d)
        x_hat = decode_fn(z.reshape(k * n, *mu.shape[1:])).reshape(k, *x.shape)
        sigma = _std_from_logvar(log_scale, x_hat)
        log_px = _normal_log_prob(x.unsqueeze(0), x_hat, sigma).reshape(k, n, -1).sum(-1)
        log_pz = (-0.5 * LOG_2PI - 0.5 * z.pow(2)).reshape(k, n, -1).sum(-1)
        log_qz = _normal_log_prob(z, mu.unsqueeze(0), std.unsqueeze(0)).reshape(k, n, -1).sum(-1)
        log_ws.append(log_px + log_pz - log_qz)
        done += k
    log_w = torch.cat(log_ws, dim=0)
    return torch.logsumexp(log_w, dim=0) - math.log(n_samples)


def bits_per_dim(log_likelihood: Tensor, num_dims: int, *, pixel_scale: float = 1.0) -> Tensor:
    """Bits per dimension: bpd = -(log_likelihood + D log(pixel_scale)) / (D ln 2).

    With the default ``pixel_scale = 1`` this is -ll / (D ln 2), the code length of the data in the
    units the model saw. A continuous density on images scaled to [0, 1] is not comparable to the
    8-bit numbers reported in the literature: if the model saw x = u * pixel_scale for 8-bit pixel
    values u (e.g. ``pixel_scale = 1/256`` for dequantised u / 256), the density of u is
    p(x) * pixel_scale^D, which this formula applies (adds log2(256) = 8 bits per dimension for
    1/256). For mean/std-normalised inputs the number is only meaningful relative to other
    models evaluated on the same normalisation; without uniform dequantisation it is not a bound
    on a discrete code length.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ConfigError(f"num_dims must be a positive integer, got {num_dims!r}.")
    if not (pixel_scale > 0 and math.isfinite(pixel_scale)):
        raise ConfigError(f"pixel_scale must be a positive finite number, got {pixel_scale!r}.")
    return -(log_likelihood + num_dims * math.log(pixel_scale)) / (num_dims * math.log(2.0))


def kl_between_posteriors(mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor) -> Tensor:
    """KL(N(mu_a, e^logvar_a) || N(mu_b, e^logvar_b)) per sample (N,), e.g. between two views."""
    return gaussian_kl(mu_a, logvar_a, mu_b, logvar_b)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-sample cosine similarity <a, b> / max(|a| |b|, eps) of the flattened rows, shape (N,)."""
    check_same_shape(a, b, "a", "b")
    a2 = a.reshape(a.shape[0], -1)
    b2 = b.reshape(b.shape[0], -1)
    denom = (a2.norm(dim=1) * b2.norm(dim=1)).clamp_min(eps)
    return (a2 * b2).sum(dim=1) / denom
