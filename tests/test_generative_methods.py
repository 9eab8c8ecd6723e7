"""SimVAE (both prior modes) and AAVAE: training lowers the loss; shapes, ranges, presets."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_vae_flags
from selfsup import pipelines
from selfsup.config import load_yaml, preset_path, resolve_config
from selfsup.data import load_dataset
from selfsup.data.base import DataInfo
from selfsup.engine import data_info
from selfsup.errors import ConfigError
from selfsup.losses.simvae import augmented_vae_loss, simvae_loss
from selfsup.methods import method_class


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ".", "train")


def _build(name: str, digits, flags: dict):
    config = pipelines.build_config(name, "digits", flags=flags)
    return method_class(name)(config, data_info(digits))


def _fixed_loss(method, images: torch.Tensor, seed: int = 7) -> float:
    """The training loss of a fixed batch with fixed augmentation and sampling noise."""
    method.step_generator.manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(method.training_loss(images)["loss"])


def _train_steps(method, images: torch.Tensor, steps: int, lr: float = 2e-3) -> None:
    opt = torch.optim.Adam(method.method_parameters(), lr=lr)
    for step in range(steps):
        method.step_generator.manual_seed(step)
        torch.manual_seed(step)
        batch = images[(step * 64) % 1024:][:64]
        loss = method.training_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()


def _simvae_flags(**model) -> dict:
    flags = tiny_vae_flags(epochs=2)
    flags["model"].update(model)
    return flags


def _aavae_flags(**model) -> dict:
    flags = tiny_vae_flags(epochs=1)
    flags["model"] = {"encoder": "conv", "width": 8, "latent_dim": 8, "val_samples": 2, **model}
    flags["augment"] = {"crop_scale": [0.5, 1.0]}
    return flags


def _check_generative(method, images: torch.Tensor, rep_dim: int) -> None:
    method.eval()
    x = method.preprocess(images)
    assert method.represent(images).shape == (images.shape[0], rep_dim)
    for out in (method.reconstruct(x), method.sample(5)):
        assert out.shape[1:] == images.shape[1:]
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert method.sample(5).shape[0] == 5


def test_simvae_trains_logs_terms_and_shapes(tmp_path, digits):
    config = pipelines.build_config("simvae", "digits", flags=_simvae_flags())
    torch.manual_seed(config.seed)  # the initialisation pipelines.train starts from
    before = method_class("simvae")(config, data_info(digits))
    method, result = pipelines.train(config, tmp_path / "run")
    assert result.global_step == 2 * (1438 // 64)
    fixed = digits.images[:64]
    start = _fixed_loss(before, fixed)
    end = _fixed_loss(method, fixed)
    assert end < start
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    for term in ("loss", "reconstruction", "entropy", "prior"):
        assert f"train/{term}" in header
    _check_generative(method, digits.images[:16], 4)


def test_augmented_vae_mode_trains(digits):
    method = _build("simvae", digits, _simvae_flags(prior="standard"))
    fixed = digits.images[:64]
    start = _fixed_loss(method, fixed)
    terms = method.training_loss(fixed)
    assert {"loss", "reconstruction", "entropy", "prior", "kl", "features"} <= terms.keys()
    _train_steps(method, digits.images, 30)
    assert _fixed_loss(method, fixed) < start
    _check_generative(method, digits.images[:16], 4)


@pytest.mark.parametrize("prior", ["simvae", "standard"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_training_loss_matches_independent_loss(digits, prior, likelihood):
    method = _build("simvae", digits, _simvae_flags(prior=prior, likelihood=likelihood,
                                                    n_views=3, entropy_weight="released"))
    images = digits.images[:10]
    method.step_generator.manual_seed(3)
    torch.manual_seed(3)
    terms = method.training_loss(images)

    # Recompute by hand: same views (same generator seed), same noise (same torch seed).
    method.step_generator.manual_seed(3)
    torch.manual_seed(3)
    x = method.augment.views(images, 3, generator=method.step_generator)
    mu, logvar = method.encoder(x).chunk(2, dim=1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape)
    out = method.decoder(z)
    if likelihood == "gaussian":
        out = torch.sigmoid(out)
    common = {"likelihood": likelihood, "log_var_x": -4.6, "entropy_weight": "released"}
    if prior == "simvae":
        ref = simvae_loss(x, out, z, mu, logvar, 3, var_z_y=0.15, **common)
    else:
        ref = augmented_vae_loss(x, out, z, mu, logvar, 3, **common)
    for key, value in ref.items():
        torch.testing.assert_close(terms[key], value.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["features"], mu.detach().view(10, 3, -1)[:, 0])


def test_aavae_trains_validates_and_shapes(tmp_path, digits):
    config = pipelines.build_config("aavae", "digits", flags=_aavae_flags())
    assert config.augment.normalize and len(config.augment.mean) == 1
    torch.manual_seed(config.seed)
    fresh = method_class("aavae")(config, data_info(digits))
    method, _ = pipelines.train(config, tmp_path / "run")
    fixed = digits.images[:64]
    method.train()
    assert _fixed_loss(method, fixed) < _fixed_loss(fresh, fixed)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    for term in ("train/log_likelihood", "train/kl", "val/log_px", "val/bits_per_dim",
                 "val/kl_aug_clean", "val/cosine_aug_clean"):
        assert term in header
    method.eval()
    diag = method.validation_loss(method.preprocess(digits.images[:32]))
    assert all(bool(torch.isfinite(v)) for v in diag.values())
    _check_generative(method, digits.images[:16], method.feature_dim)


def test_aavae_target_is_clean_image_and_mu_representation(digits):
    method = _build("aavae", digits, _aavae_flags(representation="mu", kl_coeff=0.5))
    images = digits.images[:16]
    method.step_generator.manual_seed(1)
    torch.manual_seed(1)
    terms = method.training_loss(images)
    torch.testing.assert_close(terms["loss"], 0.5 * terms["kl"] - terms["log_likelihood"])
    assert terms["features"].shape == (16, 8)
    method.eval()
    assert method.represent(images).shape == (16, 8)
    # The denoising target: the clean normalised image has the dataset normalisation applied.
    x = method.preprocess(images)
    torch.testing.assert_close(method.to_unit_range(x), images.float() / 255)


def test_view_count_and_options_are_validated():
    with pytest.raises(ConfigError, match="n_views"):
        pipelines.build_config("simvae", "digits", flags=_simvae_flags(n_views=1))
    with pytest.raises(ConfigError, match="prior"):
        pipelines.build_config("simvae", "digits", flags=_simvae_flags(prior="vamp"))
    with pytest.raises(ConfigError, match="entropy_weight"):
        pipelines.build_config("simvae", "digits", flags=_simvae_flags(entropy_weight="half"))
    with pytest.raises(ConfigError, match="encoder"):
        pipelines.build_config("aavae", "digits", flags=_aavae_flags(encoder="vit"))


def test_aavae_needs_normalization(digits):
    flags = _aavae_flags()
    flags["augment"]["normalize"] = False
    with pytest.raises(ConfigError, match="normalize"):
        _build("aavae", digits, flags)


@pytest.mark.parametrize(
    ("method", "dataset"),
    [("simvae", "mnist"), ("simvae", "fashionmnist"), ("simvae", "cifar10"),
     ("aavae", "cifar10"), ("aavae", "stl10")],
)
def test_presets_load(method, dataset):
    config = pipelines.build_config(method, dataset)
    if method == "simvae":
        assert config.data.batch_size == 64 and config.model.n_views == 2
        assert config.optim.lr == pytest.approx(8e-5) and config.optim.eps == pytest.approx(1e-4)
        assert config.trainer.epochs == 400
    else:
        assert config.model.encoder == "resnet50" and config.optim.schedule == "warmup_constant"
        assert config.augment.normalize
    if dataset == "stl10":
        assert config.data.train_split == "train+unlabeled"  # 99.5k in the release
    if dataset == "mnist":
        assert config.augment.binarize == 0.5 and config.model.encoder == "mlp"


def test_celeba_preset_is_valid():
    """CelebA has no loader yet, so resolve the preset against a 64x64 RGB data description."""
    cls = method_class("simvae")
    info = DataInfo("celeba", (3, 64, 64), 5, True)
    config = resolve_config(
        "simvae",
        cls.config_class,
        [("defaults", cls.default_config(info)),
         ("preset", load_yaml(preset_path("simvae", "celeba")))],
    )
    assert config.model.latent_dim == 64 and config.model.encoder == "slim_resnet"
    assert config.augment.jitter_prob == 1.0
