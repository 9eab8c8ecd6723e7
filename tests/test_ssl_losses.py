"""SSL losses vs. independent loop/numpy references and vs. lightly's implementations.

Differences from lightly, and how the comparisons are configured:

* VICReg: lightly follows the official code exactly like ours (variance averaged over the two
  branches, covariance summed, off-diagonal sum / d, eps 1e-4, weights 25/25/1): compared as is.
* Barlow Twins: lightly's ``lambda_param`` is our ``lambda_offdiag`` (both 5e-3), both use batch
  norm without affine (biased variance, eps 1e-5). Compared as is (single process; in
  multi-process runs lightly all-reduces per-process ``C`` while we standardise the gathered
  batch).
* NT-Xent: lightly's default temperature is 0.5, ours 0.1 -> lightly is built with 0.1. Both
  average the cross-entropy over the 2n rows.
* BYOL: lightly has no BYOL loss; its ``NegativeCosineSimilarity`` gives ``-cos``, so
  ``byol_loss = 2 + 2 * NegativeCosineSimilarity`` (the paper's normalised MSE).
* EMA: lightly's ``update_momentum(online, target, m)`` updates parameters only; buffers are
  checked separately. Lightly's ``cosine_schedule(k, K + 1, base, final)`` equals our
  ``cosine_momentum(k, K)`` for k < K (it divides by ``max_steps - 1``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    NTXentLoss,
    VICRegLoss,
    barlow_twins_loss,
    byol_loss,
    cosine_momentum,
    ema_update,
    nt_xent_loss,
    vicreg_loss,
)

try:  # lightly is an optional, test-only reference; the loop references always run
    import lightly.loss as lightly_loss
except ImportError:  # pragma: no cover
    lightly_loss = None

HAVE_LIGHTLY = lightly_loss is not None
needs_lightly = pytest.mark.skipif(not HAVE_LIGHTLY, reason="lightly is not installed")

N, D = 10, 6


def _views(seed: int, n: int = N, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated views with per-column scales on both sides of the VICReg hinge (std 1)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 2.5, d)
    a = torch.randn(n, d, generator=g) * scales
    b = 0.7 * a + 0.5 * torch.randn(n, d, generator=g) * scales
    return a, b


# ----------------------------------------------------------------- independent references


def ref_vicreg(a: np.ndarray, b: np.ndarray, eps: float = 1e-4) -> dict[str, float]:
    n, d = a.shape
    inv = sum((a[i, k] - b[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def var_term(z: np.ndarray) -> float:
        out = 0.0
        for k in range(d):
            m = sum(z[i, k] for i in range(n)) / n
            v = sum((z[i, k] - m) ** 2 for i in range(n)) / (n - 1)
            out += max(0.0, 1.0 - math.sqrt(v + eps))
        return out / d

    def cov_term(z: np.ndarray) -> float:
        m = [sum(z[i, k] for i in range(n)) / n for k in range(d)]
        out = 0.0
        for k in range(d):
            for j in range(d):
                if j != k:
                    c = sum((z[i, k] - m[k]) * (z[i, j] - m[j]) for i in range(n)) / (n - 1)
                    out += c**2
        return out / d

    var = 0.5 * (var_term(a) + var_term(b))
    cov = cov_term(a) + cov_term(b)
    return {
        "loss": 25 * inv + 25 * var + cov,
        "invariance": inv,
        "variance": var,
        "covariance": cov,
    }


def ref_barlow(a: np.ndarray, b: np.ndarray, lam: float = 5e-3, eps: float = 1e-5) -> dict:
    n, d = a.shape

    def standardise(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for k in range(d):
            m = sum(z[i, k] for i in range(n)) / n
            v = sum((z[i, k] - m) ** 2 for i in range(n)) / n
            for i in range(n):
                out[i, k] = (z[i, k] - m) / math.sqrt(v + eps)
        return out

    sa, sb = standardise(a), standardise(b)
    inv, red = 0.0, 0.0
    for k in range(d):
        for j in range(d):
            c = sum(sa[i, k] * sb[i, j] for i in range(n)) / n
            if k == j:
                inv += (1 - c) ** 2
            else:
                red += c**2
    return {"loss": inv + lam * red, "invariance": inv, "redundancy": red}


def ref_ntxent(a: np.ndarray, b: np.ndarray, t: float) -> float:
    n = a.shape[0]
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * n) if j != i)
        total += -math.log(num / den)
    return total / (2 * n)


def ref_byol(p: np.ndarray, z: np.ndarray) -> float:
    vals = []
    for i in range(p.shape[0]):
        cos = float(p[i] @ z[i]) / (np.linalg.norm(p[i]) * np.linalg.norm(z[i]))
        vals.append(2 - 2 * cos)
    return float(np.mean(vals))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _close(got: torch.Tensor, want: float | torch.Tensor, rtol: float = 1e-5) -> None:
    want_t = torch.as_tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got.detach().double(), want_t, rtol=rtol, atol=1e-6)


# ------------------------------------------------------------------------------- VICReg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vicreg_matches_reference_and_lightly(seed: int) -> None:
    a, b = _views(seed)
    out = VICRegLoss()(a, b)
    ref = ref_vicreg(_np(a), _np(b))
    assert 0 < ref["variance"] < 1  # the hinge is active for some columns only
    for key, val in ref.items():
        _close(out[key], val)
    if HAVE_LIGHTLY:
        _close(out["loss"], lightly_loss.VICRegLoss()(a, b))
    func = vicreg_loss(a, b, inv_weight=1.0, var_weight=2.0, cov_weight=3.0)
    _close(func["loss"], ref["invariance"] + 2 * ref["variance"] + 3 * ref["covariance"])


@needs_lightly
def test_vicreg_gradients_match_lightly() -> None:
    a, b = _views(3)
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    VICRegLoss()(a1, b1)["loss"].backward()
    lightly_loss.VICRegLoss()(a2, b2).backward()
    for g1, g2 in ((a1.grad, a2.grad), (b1.grad, b2.grad)):
        assert g1 is not None and torch.isfinite(g1).all() and g1.abs().sum() > 0
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize("seed", [0, 1])
def test_barlow_matches_reference_and_lightly(seed: int) -> None:
    a, b = _views(seed)
    out = BarlowTwinsLoss()(a, b)
    ref = ref_barlow(_np(a), _np(b))
    for key, val in ref.items():
        _close(out[key], val)
    if HAVE_LIGHTLY:
        _close(out["loss"], lightly_loss.BarlowTwinsLoss(lambda_param=5e-3)(a, b))
    scaled = barlow_twins_loss(a, b, lambda_offdiag=0.1, scale_loss=0.5)
    _close(scaled["loss"], 0.5 * (ref["invariance"] + 0.1 * ref["redundancy"]))


@needs_lightly
def test_barlow_gradients_match_lightly() -> None:
    a, b = _views(4)
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    BarlowTwinsLoss()(a1, b1)["loss"].backward()
    lightly_loss.BarlowTwinsLoss()(a2, b2).backward()
    for g1, g2 in ((a1.grad, a2.grad), (b1.grad, b2.grad)):
        assert g1 is not None and g1.abs().sum() > 0
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------- SimCLR


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_reference_and_lightly(temperature: float) -> None:
    a, b = _views(5)
    out = NTXentLoss(temperature=temperature)(a, b)
    _close(out["loss"], ref_ntxent(_np(a), _np(b), temperature))
    _close(out["alignment"] + out["uniformity"], out["loss"])
    if HAVE_LIGHTLY:
        _close(out["loss"], lightly_loss.NTXentLoss(temperature=temperature)(a, b))
    assert NTXentLoss().temperature == 0.1


@needs_lightly
def test_ntxent_gradients_match_lightly() -> None:
    a, b = _views(6)
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    nt_xent_loss(a1, b1, temperature=0.2)["loss"].backward()
    lightly_loss.NTXentLoss(temperature=0.2)(a2, b2).backward()
    for g1, g2 in ((a1.grad, a2.grad), (b1.grad, b2.grad)):
        assert g1 is not None and g1.abs().sum() > 0
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- BYOL


def test_byol_matches_reference_and_lightly() -> None:
    p_a, p_b = _views(7)
    z_a, z_b = _views(8)
    _close(byol_loss(p_a, z_b), ref_byol(_np(p_a), _np(z_b)))
    if HAVE_LIGHTLY:
        neg_cos = lightly_loss.NegativeCosineSimilarity()
        _close(byol_loss(p_a, z_b), 2 + 2 * neg_cos(p_a, z_b))
    out = BYOLLoss()(p_a, p_b, z_a, z_b)
    _close(out["loss_ab"], ref_byol(_np(p_a), _np(z_b)))
    _close(out["loss_ba"], ref_byol(_np(p_b), _np(z_a)))
    _close(out["loss"], ref_byol(_np(p_a), _np(z_b)) + ref_byol(_np(p_b), _np(z_a)))


def test_byol_target_gets_no_gradient() -> None:
    p_a, p_b = (t.requires_grad_(True) for t in _views(9))
    z_a, z_b = (t.requires_grad_(True) for t in _views(10))
    BYOLLoss()(p_a, p_b, z_a, z_b)["loss"].backward()
    assert z_a.grad is None and z_b.grad is None
    assert p_a.grad is not None and p_a.grad.abs().sum() > 0
    # the gradient with a detached target equals the one of 2 - 2 cos against a constant target
    p = p_a.detach().clone().requires_grad_(True)
    (2 - 2 * torch.nn.functional.cosine_similarity(p, z_b.detach()).mean()).backward()
    q = p_a.detach().clone().requires_grad_(True)
    byol_loss(q, z_b).backward()
    torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)


def test_cosine_momentum() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, base=0.996) == pytest.approx((0.996 + 1.0) / 2)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)  # clipped
    for k in (0, 13, 37, 99):
        want = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2
        assert cosine_momentum(k, 100) == pytest.approx(want, abs=1e-12)
        if HAVE_LIGHTLY:
            from lightly.utils.scheduler import cosine_schedule

            assert cosine_momentum(k, 100) == pytest.approx(cosine_schedule(k, 101, 0.99, 1.0))
    with pytest.raises(ConfigError):
        cosine_momentum(0, 0)


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_ema_update_params_and_buffers() -> None:
    torch.manual_seed(0)
    online = _small_net()
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(8, 4))  # moves BN running stats and num_batches_tracked
    before = [p.detach().clone() for p in target.parameters()]
    m = 0.9
    ema_update(target, online, m)
    for t, t0, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, m * t0 + (1 - m) * o, rtol=1e-6, atol=1e-7)
        assert not t.requires_grad or t.grad is None
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        assert torch.equal(tb, ob)
    assert int(target[1].num_batches_tracked) == 1
    # agrees with lightly's update_momentum on parameters
    if not HAVE_LIGHTLY:
        return
    from lightly.models.utils import update_momentum

    target2 = copy.deepcopy(target)
    ema_update(target, online, 0.5)
    update_momentum(online, target2, 0.5)
    for t1, t2 in zip(target.parameters(), target2.parameters(), strict=True):
        torch.testing.assert_close(t1, t2)


# ------------------------------------------------------------------------------- errors


def test_bad_inputs() -> None:
    a, b = _views(0)
    with pytest.raises(ConfigError):
        vicreg_loss(a[:1], b[:1])
    with pytest.raises(ConfigError):
        barlow_twins_loss(a[:1], b[:1])
    with pytest.raises(ValueError):
        vicreg_loss(a, b[:5])
    with pytest.raises(ConfigError):
        nt_xent_loss(a, b, temperature=0.0)


def test_all_losses_return_finite_dicts() -> None:
    a, b = (t.requires_grad_(True) for t in _views(11))
    outs = [
        VICRegLoss()(a, b),
        BarlowTwinsLoss()(a, b),
        NTXentLoss()(a, b),
        BYOLLoss()(a, b, b, a),
    ]
    for out in outs:
        assert "loss" in out and out["loss"].ndim == 0
        assert all(torch.isfinite(v) for v in out.values())
