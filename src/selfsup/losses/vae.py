"""Likelihood and KL terms shared by the VAE-family objectives.

Conventions used by every function here:

* every loss / log-density returns **per-sample** values of shape ``(N,)``: the first dimension is
  the batch and everything else (pixels, latent dimensions) is summed, so callers choose sum or
  mean over the batch themselves;
* images are float tensors; for the Bernoulli likelihood they lie in ``[0, 1]`` (non-binary values
  are allowed: the cross-entropy is then the "continuous Bernoulli without normaliser" used in
  practice) and decoders output *logits*; for the Gaussian likelihood any real values are allowed
  and decoders output *means*;
* variances are passed as log-variances (``logvar = log sigma^2``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import ConfigError

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")
LOG_2PI: float = math.log(2.0 * math.pi)


def per_sample_sum(t: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(N, ...) -> (N,)``."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they "
            "must be identical (one row per sample, same trailing dimensions). Check that the "
            "decoder output matches the input image size and that latents are (N, d)."
        )


def check_likelihood(likelihood: str) -> None:
    """Raise :class:`ConfigError` for an unknown likelihood name."""
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"Unknown likelihood {likelihood!r}: expected one of {', '.join(LIKELIHOODS)}. Use "
            "'bernoulli' for images in [0, 1] with a decoder that outputs logits, or 'gaussian' "
            "for real-valued images with a decoder that outputs means."
        )


def gaussian_kl_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) = 1/2 sum_d (mu^2 + e^logvar - 1 - logvar), (N,)."""
    check_same_shape(mu, logvar, "mu", "logvar")
    return 0.5 * per_sample_sum(mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """General diagonal KL(q || p), shape (N,).

    KL = 1/2 sum_d [logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1].
    ``mu_p`` / ``logvar_p`` may broadcast against ``mu_q`` (e.g. a shared prior).
    """
    check_same_shape(mu_q, logvar_q, "mu_q", "logvar_q")
    mu_p, logvar_p = torch.broadcast_tensors(mu_p, logvar_p)
    terms = (
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0
    )
    if terms.shape != mu_q.shape:
        raise ValueError(
            f"prior parameters of shape {tuple(mu_p.shape)} do not broadcast to the posterior "
            f"shape {tuple(mu_q.shape)}."
        )
    return 0.5 * per_sample_sum(terms)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample z = mu + e^(logvar/2) * eps with eps ~ N(0, I) (differentiable in mu and logvar)."""
    check_same_shape(mu, logvar, "mu", "logvar")
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log Bern(x | sigmoid(logits)) summed per sample = sum BCE-with-logits(logits, x), (N,).

    ``x`` may be any value in [0, 1]; the numerically stable form
    ``max(l, 0) - l x + log(1 + e^-|l|)`` is used.
    """
    check_same_shape(logits, x, "logits", "x")
    return per_sample_sum(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def scalar_like(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as a tensor in ``like``'s dtype on its device. A Python number becomes a filled
    0-d tensor (a device kernel, not a host-to-device copy, so no host-device synchronization)."""
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return like.new_full((), float(value))


def gaussian_nll(mean: Tensor, x: Tensor, log_var: float | Tensor = 0.0) -> Tensor:
    """-log N(x | mean, e^log_var) summed per sample, shape (N,).

    Per element: 1/2 log(2 pi) + 1/2 log_var + (x - mean)^2 / (2 e^log_var). ``log_var`` is a
    float, a per-pixel tensor or a learned parameter; it must broadcast to ``x.shape``.
    """
    check_same_shape(mean, x, "mean", "x")
    lv = scalar_like(log_var, x)
    per_elem = 0.5 * LOG_2PI + 0.5 * lv + (x - mean).pow(2) * (0.5 * torch.exp(-lv))
    if per_elem.shape != x.shape:
        raise ValueError(
            f"log_var of shape {tuple(lv.shape)} does not broadcast to the image shape "
            f"{tuple(x.shape)}; pass a float, a (C, H, W) tensor or a (1, C, H, W) tensor."
        )
    return per_sample_sum(per_elem)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z | mu, diag e^logvar) summed per sample, shape (N,).

    = -1/2 sum_d [log(2 pi) + logvar + (z - mu)^2 / e^logvar]; mu/logvar broadcast against z.
    """
    per_elem = -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    if per_elem.shape != z.shape:
        raise ValueError(
            f"mu {tuple(mu.shape)} / logvar {tuple(logvar.shape)} do not broadcast to z "
            f"{tuple(z.shape)}."
        )
    return per_sample_sum(per_elem)


def reconstruction_nll(
    x: Tensor, decoder_out: Tensor, likelihood: str, log_var_x: float | Tensor = 0.0
) -> Tensor:
    """-log p(x | decoder_out) per sample (N,): Bernoulli on logits or Gaussian on means."""
    check_likelihood(likelihood)
    if likelihood == "bernoulli":
        return bernoulli_nll(decoder_out, x)
    return gaussian_nll(decoder_out, x, log_var_x)


def vae_loss(
    x: Tensor,
    decoder_out: Tensor,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    beta: float = 1.0,
    log_var_x: float | Tensor = 0.0,
) -> dict[str, Tensor]:
    """(beta-)VAE loss per sample.

    reconstruction = -log p(x|z) (single decoded sample, full density incl. constants),
    kl = KL(q(z|x) || N(0, I)) analytically, loss = reconstruction + beta * kl; for beta = 1 the
    loss is the single-sample estimate of the negative ELBO. ``log_var_x`` is only used by the
    Gaussian likelihood. Returns ``{"loss", "reconstruction", "kl"}``, each of shape (N,).
    """
    if not math.isfinite(beta) or beta < 0:
        raise ConfigError(
            f"beta must be a finite non-negative number, got {beta}. beta = 1 gives the standard "
            "VAE (negative ELBO); beta > 1 weights the KL term more (beta-VAE)."
        )
    rec = reconstruction_nll(x, decoder_out, likelihood, log_var_x)
    kl = gaussian_kl_standard(mu, logvar)
    if rec.shape[0] != kl.shape[0]:
        raise ValueError(
            f"x has {rec.shape[0]} rows but mu has {kl.shape[0]}; each image needs one posterior."
        )
    return {"loss": rec + beta * kl, "reconstruction": rec, "kl": kl}
