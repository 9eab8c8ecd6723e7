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
                Evaluation (``eval()``) drops the noise. tau defaults to 1 for every bridge, as
                the released code passes it (``channel_tau`` 1.0).

``vq``          vector quantization (van den Oord et al., 2017) with a codebook C of V codes of
                dimension d: e is reshaped to L vectors e_l (d each), scored by
                s_lk = -||e_l - C_k||^2 / (2 tau).

                ``hard``: k_l = argmax_k s_lk (the nearest code), q_l = C[k_l],
                m = e + sg(q - e) (straight-through), commitment r = sum_{l,d} (e_l - sg(q_l))^2.

                stochastic (``hard`` false, the released launch scripts' ``--hard=False``):
                k_l ~ softmax_k(s_lk) while training (argmax in eval), and
                m_l = q_l = (1 - sqrt(beta)) C[k_l] + sqrt(beta) e_l + sqrt(tau) eps,
                eps ~ N(0, I); gradients reach C and e through q; r = sum_{l,d} (q_l - e_l)^2.

                aux = {"vq_commitment": w * mean_n r} with (``commitment_scale``)
                ``released``: w = beta / (2 tau) (``encode.py:276-283``), i.e. 0.5 L d / tau
                times ``mean``: w = beta / (L d), beta times the mean over N, L and d.

                Codebook (``vq_update``):
                ``released``: a parameter drawn from N(0, 2 / (L d)) (``encode.py:213-215``); the
                stochastic VQ trains it by gradients; the hard VQ updates it in training mode by
                the released rule, bug included (``encode.py:234-243``: the masked_fill zeroes
                the vectors assigned to each code, so code k averages the vectors NOT assigned
                to it, divided by the number assigned to it):
                    C_k <- gamma C_k + (1 - gamma) sum_{l: k_l != k} e_l / max(n_k, 1).
                A target network keeps its own copy, updated by the same rule on its own inputs
                and by the parameter EMA (the released teacher).
                ``kmeans`` (ours, hard only): EMA k-means (decay gamma) over all N * L vectors of
                the (gathered) batch, codebook from N(0, 1):
                    n_k <- gamma n_k + (1 - gamma) #{e_l assigned to k}
                    s_k <- gamma s_k + (1 - gamma) sum_{e_l assigned to k} e_l
                    C_k  = s_k / n~_k,  n~_k = (n_k + eps) / (sum_j n_j + V eps) * sum_j n_j
                (Laplace smoothing of the counts, eps = 1e-5, keeps unused codes finite); the
                codebook and the statistics are buffers that a target network copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import ConfigError

ENCODE_METHODS = ("continuous", "softmax", "gumbel", "vq")
VQ_UPDATES = ("released", "kmeans")
COMMITMENT_SCALES = ("released", "mean")


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
    """Vector quantization of L vectors of dimension d against V codes (see module doc).

    ``update``: ``released`` (the codebook is a parameter; hard: the released EMA rule, bug
    included; stochastic: trained by gradients) or ``kmeans`` (our EMA k-means, a buffer).
    ``hard``: nearest code with straight-through gradients; ``False``: the released stochastic VQ
    (training needs ``update="released"``). ``commitment_scale``: ``released`` or ``mean``.
    """

    def __init__(self, message_size: int = 128, vocab_size: int = 16, code_dim: int = 8,
                 beta: float = 0.25, decay: float = 0.85, eps: float = 1e-5,
                 update: str = "released", hard: bool = True, tau: float = 1.0,
                 commitment_scale: str = "released") -> None:
        _check(message_size >= 1 and vocab_size >= 2 and code_dim >= 1,
               f"The vq bottleneck needs message_size >= 1, vocab_size >= 2 and code_dim >= 1, "
               f"got {message_size}, {vocab_size} and {code_dim} (defaults 128, 16, 8).")
        _check(beta >= 0, f"The vq commitment weight must be >= 0, got {beta} (default 0.25).")
        _check(0.0 <= decay < 1.0, f"The vq EMA decay must lie in [0, 1), got {decay} (0.85).")
        _check(tau > 0, f"The vq temperature tau must be > 0, got {tau}.")
        _check(update in VQ_UPDATES, f"model.vq_update must be one of {', '.join(VQ_UPDATES)}, "
               f"got {update!r}.")
        _check(commitment_scale in COMMITMENT_SCALES, "model.commitment_scale must be one of "
               f"{', '.join(COMMITMENT_SCALES)}, got {commitment_scale!r}.")
        _check(hard or update == "released",
               "The stochastic VQ (model.hard false) exists only with the released codebook "
               "(model.vq_update released); set model.hard true to use vq_update kmeans.")
        super().__init__(message_size * code_dim, message_size * code_dim)
        self.message_size = message_size
        self.vocab_size = vocab_size
        self.code_dim = code_dim
        self.beta = float(beta)
        self.decay = float(decay)
        self.eps = float(eps)
        self.update = update
        self.hard = bool(hard)
        self.tau = float(tau)
        self.commitment_scale = commitment_scale
        self.ema_updates = True  # False in momentum copies whose codebook is a copied buffer
        if update == "released":
            self.init_std = math.sqrt(2.0 / (message_size * code_dim))
            codebook = torch.randn(vocab_size, code_dim) * self.init_std
            # No gradient reaches the codebook of the hard VQ: keep it out of the optimizer.
            self.codebook = nn.Parameter(codebook, requires_grad=not self.hard)
        else:
            self.init_std = 1.0
            codebook = torch.randn(vocab_size, code_dim)
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(vocab_size))
            self.register_buffer("ema_sum", codebook.clone())

    def as_momentum_copy(self) -> None:
        """In a target network: a k-means codebook is copied from the online one (buffers);
        the released target keeps updating its own codebook (an EMA'd parameter)."""
        if self.update == "kmeans":
            self.ema_updates = False

    def distances(self, vectors: Tensor) -> Tensor:
        """Squared Euclidean distances (M, V) of the rows of ``vectors`` to the codes (no
        gradient: codes are chosen, not differentiated)."""
        c = self.codebook.detach().to(vectors.dtype)
        return vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ c.T + c.pow(2).sum(1)[None]

    def assign(self, vectors: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean distance) of each row of ``vectors``."""
        return self.distances(vectors).argmin(dim=1)

    def forward(self, e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        n = e.shape[0]
        flat = e.reshape(n * self.message_size, self.code_dim)
        codebook = self.codebook.to(flat.dtype)
        if self.hard:
            idx = self.assign(flat.detach())
            q = codebook[idx].detach()
            out = flat + (q - flat).detach()  # straight-through
        else:
            scores = -0.5 * self.distances(flat.detach()) / self.tau
            if self.training:
                idx = torch.multinomial(torch.softmax(scores.float(), dim=1), 1).squeeze(1)
            else:
                idx = scores.argmax(dim=1)
            root = math.sqrt(self.beta)
            q = ((1 - root) * codebook[idx] + root * flat
                 + math.sqrt(self.tau) * torch.randn_like(flat))
            out = q  # gradients reach the codebook and (through root * e) the embedding
        sq = (q - flat).pow(2)
        if self.commitment_scale == "released":
            commitment = 0.5 / self.tau * self.beta * sq.sum() / n
        else:
            commitment = self.beta * sq.mean()
        if self.training and self.hard and self.ema_updates:
            if self.update == "kmeans":
                self.kmeans_step(flat.detach(), idx)
            else:
                self.released_step(flat.detach(), idx)
        return out.reshape(n, -1), {"vq_commitment": commitment}

    @staticmethod
    def _all_reduce(*tensors: Tensor) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in tensors:
                torch.distributed.all_reduce(t)

    @torch.no_grad()
    def kmeans_step(self, vectors: Tensor, idx: Tensor) -> None:
        """One EMA k-means update of the codebook from ``vectors`` assigned to codes ``idx``."""
        one_hot = F.one_hot(idx, self.vocab_size).to(torch.float32)
        counts = one_hot.sum(0)
        sums = one_hot.T @ vectors.float()
        self._all_reduce(counts, sums)
        g = self.decay
        self.ema_count.mul_(g).add_(counts, alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.vocab_size * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def released_step(self, vectors: Tensor, idx: Tensor) -> None:
        """The released update (``encode.py:234-243``), bug included: code k moves towards the
        sum of the vectors NOT assigned to it divided by the number assigned to it,
        ``C_k <- gamma C_k + (1 - gamma) sum_{i: idx_i != k} e_i / max(n_k, 1)``."""
        one_hot = F.one_hot(idx, self.vocab_size).to(torch.float32)
        counts = one_hot.sum(0)
        assigned = one_hot.T @ vectors.float()
        total = vectors.float().sum(0, keepdim=True)
        self._all_reduce(counts, assigned, total)
        target = (total - assigned) / counts.clamp(min=1.0)[:, None]
        self.codebook.lerp_(target.to(self.codebook.dtype), 1.0 - self.decay)

    def code(self, e: Tensor) -> Tensor:
        n = e.shape[0]
        idx = self.assign(e.reshape(n * self.message_size, self.code_dim).float())
        one_hot = F.one_hot(idx, self.vocab_size).to(torch.float32)
        return one_hot.reshape(n, self.message_size * self.vocab_size)


def default_tau(tau: float | None) -> float:
    """tau when given, else 1 (the released code passes 1.0 to every bridge)."""
    return 1.0 if tau is None else float(tau)


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
    vq_update: str = "released",
    commitment_scale: str = "released",
) -> Bridge:
    """The bridge named by ``encode_method``; ``dim`` is the embedding width for continuous."""
    if encode_method == "continuous":
        return ContinuousBridge(dim)
    if encode_method in ("softmax", "gumbel"):
        return SoftmaxBridge(message_size, vocab_size, default_tau(tau), hard=hard,
                             gumbel=encode_method == "gumbel")
    if encode_method == "vq":
        return VQBridge(message_size, vocab_size, code_dim, beta, decay, update=vq_update,
                        hard=hard, tau=default_tau(tau), commitment_scale=commitment_scale)
    raise ConfigError(
        f"Unknown encode method {encode_method!r}; use one of {', '.join(ENCODE_METHODS)}."
    )


def build_embedder(in_dim: int, out_dim: int, hidden: list[int] | None = None,
                   batch_norm: bool = True) -> nn.Sequential:
    """Embedder h -> e: ``(Linear-BN-ReLU) per hidden size``, then Linear(out_dim, no bias), then
    BatchNorm1d (``batch_norm``; the released MoCo-SimCLR has none)."""
    layers: list[nn.Module] = []
    d = in_dim
    for width in hidden or []:
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        d = width
    layers.append(nn.Linear(d, out_dim, bias=False))
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*layers)
