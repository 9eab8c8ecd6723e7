"""Soft-discretization bottleneck ("bridge") between an embedder and a projector.

Every bridge maps a batch of embeddings ``e`` (N, in_dim) to messages ``m`` (N, out_dim) and
returns ``(m, aux)`` where ``aux`` is a dict of auxiliary loss terms (already weighted) that the
method adds to its loss and logs. ``code(e)`` is the discrete code: for each of the L groups the
one-hot vector of the chosen symbol, flattened to a float (N, L * V) tensor (the continuous
bridge has no code and returns None).

``continuous``  m = e (identity, no code).

``softmax``     e is reshaped to L groups of V logits, m_l = softmax(e_l / tau) over the V entries,
                flattened back to (N, L * V); every group of m sums to 1. With ``hard=True`` the
                forward value is the one-hot vector of argmax_v e_l,v and the backward pass uses
                the gradient of the soft softmax (straight-through: m = onehot + (s - sg(s))).

``gumbel``      as softmax, but with Gumbel noise g = -log(-log u), u ~ U(0, 1), added to the
                logits before dividing by tau while training: m_l = softmax((e_l + g_l) / tau).
                Evaluation (``eval()``) drops the noise. tau defaults to sqrt(V).

``vq``          vector quantization (van den Oord et al., 2017) with a codebook C of V codes of
                dimension d: e is reshaped to L vectors e_l (d each), q_l = C[k_l] with
                k_l = argmin_k ||e_l - C_k||^2, m = e + sg(q - e) (straight-through gradients).
                aux = {"vq_commitment": beta * mean ||e_l - sg(q_l)||^2} (mean over N, L and the
                d coordinates). The codebook is not trained by gradients but by EMA k-means
                (decay gamma) in training mode, over all N * L vectors of the (gathered) batch:
                    n_k <- gamma n_k + (1 - gamma) #{e_l assigned to k}
                    s_k <- gamma s_k + (1 - gamma) sum_{e_l assigned to k} e_l
                    C_k  = s_k / n~_k,  n~_k = (n_k + eps) / (sum_j n_j + V eps) * sum_j n_j
                (Laplace smoothing of the counts, eps = 1e-5, keeps unused codes finite). The
                codebook and the EMA statistics are buffers, so checkpoints restore them exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import ConfigError

ENCODE_METHODS = ("continuous", "softmax", "gumbel", "vq")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def straight_through_one_hot(soft: Tensor) -> Tensor:
    """One-hot of ``argmax`` over the last axis in the forward pass, gradient of ``soft`` backward.

    ``onehot + soft - sg(soft)``: equal to the one-hot in value, d/dsoft = identity.
    """
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly the one-hot in value


def group_one_hot(logits: Tensor, groups: int, vocab: int) -> Tensor:
    """(N, L * V) one-hot of the argmax of each of the L groups of V values, as float."""
    n = logits.shape[0]
    idx = logits.reshape(n, groups, vocab).argmax(dim=-1)
    return F.one_hot(idx, vocab).to(torch.float32).reshape(n, groups * vocab)


class Bridge(nn.Module):
    """Base class: ``forward(e) -> (m, aux)``; ``in_dim``/``out_dim``; ``code(e)``."""

    discrete: bool = True

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def code(self, e: Tensor) -> Tensor | None:
        """Discrete code (N, L * V) float one-hot per group, or None (continuous)."""
        raise NotImplementedError


class ContinuousBridge(Bridge):
    """Identity: m = e, no auxiliary loss, no code."""

    discrete = False

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)

    def forward(self, e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return e, {}

    def code(self, e: Tensor) -> Tensor | None:
        return None


class SoftmaxBridge(Bridge):
    """Group softmax m_l = softmax(e_l / tau) over V for each of L groups (see module doc).

    ``gumbel=True`` adds Gumbel(0, 1) noise to the logits in training mode; ``hard=True`` uses a
    straight-through one-hot of the argmax.
    """

    def __init__(self, message_size: int = 128, vocab_size: int = 16, tau: float = 1.0,
                 hard: bool = False, gumbel: bool = False) -> None:
        _check(message_size >= 1 and vocab_size >= 2,
               f"The bottleneck needs message_size >= 1 and vocab_size >= 2, got {message_size} "
               f"and {vocab_size} (defaults 128 and 16).")
        _check(tau > 0, f"The bottleneck temperature tau must be > 0, got {tau}.")
        super().__init__(message_size * vocab_size, message_size * vocab_size)
        self.message_size = message_size
        self.vocab_size = vocab_size
        self.tau = float(tau)
        self.hard = bool(hard)
        self.gumbel = bool(gumbel)

    def forward(self, e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        n = e.shape[0]
        logits = e.reshape(n, self.message_size, self.vocab_size)
        if self.gumbel and self.training:
            u = torch.rand_like(logits).clamp_(min=1e-10, max=1.0 - 1e-7)
            logits = logits - torch.log(-torch.log(u))
        soft = torch.softmax(logits / self.tau, dim=-1)
        out = straight_through_one_hot(soft) if self.hard else soft
        return out.reshape(n, -1), {}

    def code(self, e: Tensor) -> Tensor:
        return group_one_hot(e, self.message_size, self.vocab_size)


class VQBridge(Bridge):
    """Vector quantization with an EMA k-means codebook and commitment loss (see module doc)."""

    def __init__(self, message_size: int = 128, vocab_size: int = 16, code_dim: int = 8,
                 beta: float = 0.25, decay: float = 0.85, eps: float = 1e-5) -> None:
        _check(message_size >= 1 and vocab_size >= 2 and code_dim >= 1,
               f"The vq bottleneck needs message_size >= 1, vocab_size >= 2 and code_dim >= 1, "
               f"got {message_size}, {vocab_size} and {code_dim} (defaults 128, 16, 8).")
        _check(beta >= 0, f"The vq commitment weight must be >= 0, got {beta} (default 0.25).")
        _check(0.0 <= decay < 1.0, f"The vq EMA decay must lie in [0, 1), got {decay} (0.85).")
        super().__init__(message_size * code_dim, message_size * code_dim)
        self.message_size = message_size
        self.vocab_size = vocab_size
        self.code_dim = code_dim
        self.beta = float(beta)
        self.decay = float(decay)
        self.eps = float(eps)
        self.ema_updates = True  # switched off in EMA copies (targets / key encoders)
        codebook = torch.randn(vocab_size, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(vocab_size))
        self.register_buffer("ema_sum", codebook.clone())

    def assign(self, vectors: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean distance) of each row of ``vectors``."""
        c = self.codebook.to(vectors.dtype)
        dist = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ c.T + c.pow(2).sum(1)[None])
        return dist.argmin(dim=1)

    def forward(self, e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        n = e.shape[0]
        flat = e.reshape(n * self.message_size, self.code_dim)
        idx = self.assign(flat.detach())
        q = self.codebook.to(flat.dtype)[idx]
        commitment = self.beta * F.mse_loss(flat, q.detach())
        if self.training and self.ema_updates:
            self.ema_step(flat.detach(), idx)
        out = flat + (q - flat).detach()
        return out.reshape(n, -1), {"vq_commitment": commitment}

    @torch.no_grad()
    def ema_step(self, vectors: Tensor, idx: Tensor) -> None:
        """One EMA k-means update of the codebook from ``vectors`` assigned to codes ``idx``."""
        one_hot = F.one_hot(idx, self.vocab_size).to(torch.float32)
        counts = one_hot.sum(0)
        sums = one_hot.T @ vectors.float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        g = self.decay
        self.ema_count.mul_(g).add_(counts, alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.vocab_size * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    def code(self, e: Tensor) -> Tensor:
        n = e.shape[0]
        idx = self.assign(e.reshape(n * self.message_size, self.code_dim).float())
        one_hot = F.one_hot(idx, self.vocab_size).to(torch.float32)
        return one_hot.reshape(n, self.message_size * self.vocab_size)


def default_tau(encode_method: str, vocab_size: int, tau: float | None) -> float:
    """tau when given; else sqrt(V) for gumbel and 1 for softmax."""
    if tau is not None:
        return float(tau)
    return math.sqrt(vocab_size) if encode_method == "gumbel" else 1.0


def embed_dim(encode_method: str, message_size: int, vocab_size: int, code_dim: int) -> int:
    """Width the embedder must produce: L * d for vq, L * V for softmax / gumbel."""
    return message_size * (code_dim if encode_method == "vq" else vocab_size)


def build_bridge(
    encode_method: str,
    dim: int,
    message_size: int = 128,
    vocab_size: int = 16,
    tau: float | None = None,
    hard: bool = False,
    code_dim: int = 8,
    beta: float = 0.25,
    decay: float = 0.85,
) -> Bridge:
    """The bridge named by ``encode_method``; ``dim`` is the embedding width for continuous."""
    if encode_method == "continuous":
        return ContinuousBridge(dim)
    if encode_method in ("softmax", "gumbel"):
        return SoftmaxBridge(message_size, vocab_size, default_tau(encode_method, vocab_size, tau),
                             hard=hard, gumbel=encode_method == "gumbel")
    if encode_method == "vq":
        return VQBridge(message_size, vocab_size, code_dim, beta, decay)
    raise ConfigError(
        f"Unknown encode method {encode_method!r}; use one of {', '.join(ENCODE_METHODS)}."
    )


def build_embedder(in_dim: int, out_dim: int, hidden: list[int] | None = None) -> nn.Sequential:
    """Embedder h -> e: ``(Linear-BN-ReLU) per hidden size``, then Linear(out_dim, no bias)-BN."""
    layers: list[nn.Module] = []
    d = in_dim
    for width in hidden or []:
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        d = width
    layers += [nn.Linear(d, out_dim, bias=False), nn.BatchNorm1d(out_dim)]
    return nn.Sequential(*layers)
