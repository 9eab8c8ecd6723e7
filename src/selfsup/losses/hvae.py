"""Losses of hierarchical VAEs with binary latents (Flach, Schlesinger, Shekhovtsov, AISTATS 2024).

Model ``p(z0) p(z1|z0) p(x|z1)``: ``z0 in {0,1}^n0`` with the uniform prior ``p(z0) = 2^-n0``,
``p(z1|z0) = prod_j Bern(z1_j; s(f01(z0)_j))``, ``p(x|z1)`` Bernoulli (logits) or Gaussian
``N(mu(z1), sigma^2)`` per pixel. Encoders (``s`` = sigmoid):

- ladder:  ``q(z0|x) = Bern(s(a0(x)))``, ``q(z1|z0,x) = Bern(s(f01(z0) + a1(x)))`` (f01 shared);
- reverse: ``q(z1|x) = Bern(s(b1(x)))``, ``q(z0|z1) = Bern(s(g10(z1)))``.

Every ``log Bern(z; s(logits))`` is the exact BCE-with-logits (finite for every logit, with the
gradient ``z - s(logits)``, so a confidently wrong bit is still corrected). Only the analytic KL
terms of the ladder ELBO and the mutual-information diagnostic smooth probabilities,
``p -> eps + (1 - 2 eps) p`` with ``eps = 5e-7``, as the released code does
(``main_elbo.py:22-25``: ``p (1 - 1e-6) + 1e-6 / 2``).

Two objectives:

- ELBO ``E_q[log p(x, z) - log q(z|x)]`` with binary samples drawn by the ZGR estimator
  (:func:`zgr_sample`); ladder: analytic per-bit KL terms,
  ``ELBO = E_q[log p(x|z1)] - KL(q(z0|x) || p(z0)) - E_{q(z0|x)} KL(q(z1|z0,x) || p(z1|z0))``;
  reverse: the single-sample estimate of the whole integrand.
- symmetric equilibrium learning: the decoder maximizes ``E_{x~data, z~q(z|x)} log p(x, z)``
  (:func:`decoder_ml_loss`) and the encoder ``E_{(z,x)~p} log q(z|x)`` (ladder:
  :func:`ladder_encoder_ml_loss`, reverse: :func:`reverse_encoder_ml_loss`); samples carry no
  gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 5e-7
LOG2 = math.log(2.0)

Net = Callable[[Tensor], Tensor]


def smooth(p: Tensor, eps: float = EPS) -> Tensor:
    """``eps + (1 - 2 eps) p``: probabilities kept inside ``[eps, 1 - eps]``."""
    return eps + (1.0 - 2.0 * eps) * p


# ------------------------------------------------------------------------------------------ ZGR
class _ZGR(torch.autograd.Function):
    """Forward ``b = [u < s(eta)]``; backward ``d b / d eta = (b (1 - p) + (1 - b) p) / 2``."""

    @staticmethod
    def forward(ctx, logits: Tensor, u: Tensor) -> Tensor:  # type: ignore[override]
        p = torch.sigmoid(logits)
        b = (u < p).to(logits.dtype)
        ctx.save_for_backward(b, p)
        return b

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        b, p = ctx.saved_tensors
        jacobian = 0.5 * (b * (1.0 - p) + (1.0 - b) * p)
        return grad * jacobian, None


def zgr_sample(logits: Tensor, u: Tensor | None = None) -> Tensor:
    """A binary sample of ``Bern(s(logits))`` with the ZGR gradient estimator.

    Forward: the hard sample ``b``. Backward: the Jacobian ``(b (1 - p) + (1 - b) p) / 2`` on the
    logits, whose expectation over ``b`` is ``p (1 - p) = d p / d logits``. ``u`` are the uniform
    numbers that decide the sample (drawn from the global generator when omitted).
    """
    if u is None:
        u = torch.rand(logits.shape, device=logits.device, dtype=logits.dtype)
    return _ZGR.apply(logits, u)


def bernoulli_sample(logits: Tensor) -> Tensor:
    """A hard sample of ``Bern(s(logits))`` without gradient."""
    return (torch.rand_like(logits) < torch.sigmoid(logits)).to(logits.dtype)


# ----------------------------------------------------------------------------- Bernoulli terms
def bernoulli_log_prob(z: Tensor, logits: Tensor) -> Tensor:
    """``sum_j z_j log s(l_j) + (1 - z_j) log s(-l_j)``: exact BCE-with-logits, negated; (N,)."""
    logits = logits.float()
    return -F.binary_cross_entropy_with_logits(
        logits, z.to(logits.dtype), reduction="none").sum(dim=-1)


def bernoulli_kl(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """Per-bit ``KL(Bern(q) || Bern(p)) = q log(q/p) + (1-q) log((1-q)/(1-p))``, summed; (N,).

    Both probabilities are the smoothed sigmoids of the logits.
    """
    q = smooth(torch.sigmoid(q_logits.float()))
    p = smooth(torch.sigmoid(p_logits.float()))
    kl = q * (torch.log(q) - torch.log(p)) + (1 - q) * (torch.log1p(-q) - torch.log1p(-p))
    return kl.sum(dim=-1)


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Per-bit entropy ``-p log p - (1-p) log(1-p)`` of smoothed ``p = s(logits)`` (elementwise)."""
    p = smooth(torch.sigmoid(logits.float()))
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p))


def mutual_information(logits: Tensor) -> Tensor:
    """Batch estimate of ``sum_j I(x; z_j) = H(mean_x p_j(x)) - mean_x H(p_j(x))`` (nats).

    A diagnostic only (the factorized bound of the code's information about x).
    """
    p = smooth(torch.sigmoid(logits.float()))
    mean = p.mean(dim=0)
    h_mean = -(mean * torch.log(mean) + (1 - mean) * torch.log1p(-mean))
    return (h_mean - bernoulli_entropy(logits).mean(dim=0)).sum()


# ------------------------------------------------------------------------------- log p(x | z1)
def log_px(x: Tensor, out: Tensor, likelihood: str, log_sigma: Tensor | None = None) -> Tensor:
    """``log p(x|z1)`` summed over pixels; ``out`` are logits (bernoulli) or means (gaussian).

    Gaussian: ``-0.5 ((x - mu) / sigma)^2 - log sigma - 0.5 log(2 pi)`` per pixel, one sigma.
    """
    out = out.float()
    if likelihood == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, x.float(), reduction="none")
    else:
        assert log_sigma is not None
        ls = log_sigma.float()
        ll = -0.5 * ((x.float() - out) * torch.exp(-ls)).square() - ls - 0.5 * math.log(2 * math.pi)
    return ll.flatten(1).sum(dim=1)


def sample_x(out: Tensor, likelihood: str, log_sigma: Tensor | None = None) -> Tensor:
    """A sample of ``p(x|z1)`` (no gradient): Bernoulli pixels, or ``mu + sigma * eps``."""
    out = out.float()
    if likelihood == "bernoulli":
        return bernoulli_sample(out)
    assert log_sigma is not None
    return out + torch.exp(log_sigma.float()) * torch.randn_like(out)


def mean_x(out: Tensor, likelihood: str) -> Tensor:
    """``E[x|z1]`` clipped to [0, 1] (what images show by default)."""
    out = out.float()
    return torch.sigmoid(out) if likelihood == "bernoulli" else out.clamp(0, 1)


def mode_x(out: Tensor, likelihood: str) -> Tensor:
    """The mode of ``p(x|z1)`` clipped to [0, 1]: binary pixels ``[logit > 0]`` (Bernoulli) or the
    mean (Gaussian); what the released code writes for FID (``generate_data.py:71, 88``)."""
    out = out.float()
    return (out > 0).to(out.dtype) if likelihood == "bernoulli" else out.clamp(0, 1)


def image_x(out: Tensor, likelihood: str, image: str = "mean") -> Tensor:
    """``mean_x`` or ``mode_x`` by name (``image``: mean or mode)."""
    return mode_x(out, likelihood) if image == "mode" else mean_x(out, likelihood)


# ----------------------------------------------------------------------------- log-probabilities
def log_prior_z0(z0: Tensor) -> Tensor:
    """``log p(z0) = -n0 log 2`` for every z0; (N,)."""
    return torch.full(z0.shape[:1], -z0.shape[-1] * LOG2, device=z0.device)


def log_joint(
    x: Tensor,
    z0: Tensor,
    z1: Tensor,
    f01: Net,
    decode: Net,
    likelihood: str,
    log_sigma: Tensor | None = None,
) -> Tensor:
    """``log p(x, z0, z1) = log p(z0) + log p(z1|z0) + log p(x|z1)``; (N,)."""
    return (
        log_prior_z0(z0)
        + bernoulli_log_prob(z1, f01(z0))
        + log_px(x, decode(z1), likelihood, log_sigma)
    )


def ladder_log_q(z0: Tensor, z1: Tensor, a0: Tensor, a1: Tensor, f01: Net) -> Tensor:
    """Ladder ``log q(z0, z1 | x) = log Bern(z0; s(a0)) + log Bern(z1; s(f01(z0) + a1))``."""
    return bernoulli_log_prob(z0, a0) + bernoulli_log_prob(z1, f01(z0) + a1)


def reverse_log_q(z0: Tensor, z1: Tensor, b1: Tensor, g10: Net) -> Tensor:
    """Reverse ``log q(z0, z1 | x) = log Bern(z1; s(b1)) + log Bern(z0; s(g10(z1)))``."""
    return bernoulli_log_prob(z1, b1) + bernoulli_log_prob(z0, g10(z1))


# --------------------------------------------------------------------------------------- ELBO
def ladder_elbo_terms(
    x: Tensor,
    a0: Tensor,
    a1: Tensor,
    f01: Net,
    decode: Net,
    likelihood: str,
    log_sigma: Tensor | None = None,
    z0: Tensor | None = None,
    z1_u: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-sample ladder ELBO with analytic per-bit KL terms (ZGR samples of z0, z1).

    ``elbo = log p(x|z1) - KL(q(z0|x) || U) - KL(q(z1|z0,x) || p(z1|z0))`` with
    ``z0 ~ q(z0|x)``, ``z1 ~ q(z1|z0,x)``. ``z0`` and ``z1_u`` may be given (tests enumerate them).
    Returns (N,) tensors ``elbo``, ``rec``, ``kl0``, ``kl1``.
    """
    if z0 is None:
        z0 = zgr_sample(a0)
    kl0 = bernoulli_kl(a0, torch.zeros_like(a0))
    prior1 = f01(z0)
    post1 = prior1 + a1
    z1 = zgr_sample(post1, z1_u)
    kl1 = bernoulli_kl(post1, prior1)
    rec = log_px(x, decode(z1), likelihood, log_sigma)
    return {"elbo": rec - kl0 - kl1, "rec": rec, "kl0": kl0, "kl1": kl1}


def reverse_elbo_terms(
    x: Tensor,
    b1: Tensor,
    g10: Net,
    f01: Net,
    decode: Net,
    likelihood: str,
    log_sigma: Tensor | None = None,
) -> dict[str, Tensor]:
    """Single-sample reverse-order ELBO ``log p(x, z) - log q(z|x)``, z1 ~ q(z1|x), z0 ~ q(z0|z1).

    Returns (N,) tensors ``elbo``, ``rec`` (log p(x|z1)) and ``kl`` (the rest, negated).
    """
    z1 = zgr_sample(b1)
    post0 = g10(z1)
    z0 = zgr_sample(post0)
    rec = log_px(x, decode(z1), likelihood, log_sigma)
    log_pz = log_prior_z0(z0) + bernoulli_log_prob(z1, f01(z0))
    log_q = bernoulli_log_prob(z1, b1) + bernoulli_log_prob(z0, post0)
    kl = log_q - log_pz
    return {"elbo": rec - kl, "rec": rec, "kl": kl}


# ------------------------------------------------------------------------ symmetric learning
def decoder_ml_loss(
    x: Tensor,
    z0: Tensor,
    z1: Tensor,
    f01: Net,
    decode: Net,
    likelihood: str,
    log_sigma: Tensor | None = None,
) -> Tensor:
    """Decoder's maximum-likelihood step: ``-mean log p(x, z0, z1)`` on pairs z ~ q(z|x)."""
    return -log_joint(x, z0.detach(), z1.detach(), f01, decode, likelihood, log_sigma).mean()


def ladder_encoder_ml_loss(
    z0: Tensor, z1: Tensor, a0: Tensor, a1: Tensor, prior1: Tensor
) -> Tensor:
    """Ladder encoder's step: ``-mean log q(z0, z1 | x)`` on samples (z, x) ~ p.

    ``prior1 = f01(z0)`` belongs to the decoder and is detached here, so only a0, a1 learn.
    """
    z0, z1 = z0.detach(), z1.detach()
    log_q = bernoulli_log_prob(z0, a0) + bernoulli_log_prob(z1, prior1.detach() + a1)
    return -log_q.mean()


def reverse_encoder_ml_loss(z0: Tensor, z1: Tensor, b1: Tensor, g10: Net) -> Tensor:
    """Reverse encoder's step (the wake-sleep sleep phase): ``-mean log q(z0, z1 | x)``."""
    return -reverse_log_q(z0.detach(), z1.detach(), b1, g10).mean()
