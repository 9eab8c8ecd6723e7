"""Hierarchical binary VAE: ZGR estimator, KL terms, log-probabilities against enumeration,
symmetric-learning gradients, training, exact resume with two optimizers, sampling and CLI."""

from __future__ import annotations

import itertools
import json
import math

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
    """Direct probability prod_j p_j^z_j (1 - p_j)^(1 - z_j) with smoothed p (float64)."""
    p = 1e-6 + (1 - 2e-6) * torch.sigmoid(logits.double())
    return torch.where(z.bool(), p, 1 - p).prod(dim=-1)


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
    q = 1e-6 + (1 - 2e-6) * torch.sigmoid(q_logits.double())
    p = 1e-6 + (1 - 2e-6) * torch.sigmoid(p_logits.double())
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
    terms = method.symmetric_terms(x)
    players = {"decoder": method.decoder, "encoder": method.encoder}
    for own, loss in (("decoder", terms["loss_decoder"]), ("encoder", terms["loss_encoder"])):
        method.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for name, module in players.items():
            grads = [p.grad for key, p in module.named_parameters()
                     if not (key == "log_sigma" and likelihood == "bernoulli")]  # unused then
            if name == own:
                assert all(g is not None for g in grads), f"{own} step misses {name} params"
                assert sum(float(g.abs().sum()) for g in grads) > 0
            else:
                assert all(g is None for g in grads), f"{own} step touched {name} params"


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


def test_sampling_modes_and_cli(tmp_path, mnist_dir, capsys):
    flags = _run_flags(mnist_dir, epochs=1)
    method, _ = pipelines.train(pipelines.build_config("hvae", "mnist", flags=flags),
                                tmp_path / "run")
    random = method.sample(5)
    chain = method.sample_limiting(5, steps=3)
    for images in (random, chain):
        assert images.shape == (5, 1, 28, 28)
        assert 0 <= float(images.min()) and float(images.max()) <= 1
    code = main(["generate", "--run", str(tmp_path / "run"), "--mode", "limiting", "--steps",
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
