"""The speed benchmark's side-by-side machinery, run tiny on the CPU (no real data needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's benchmarks package

from benchmarks import speed  # noqa: E402
from benchmarks.speed import reference  # noqa: E402

from selfsup.pipelines import build_config  # noqa: E402


def test_reference_transform_mirrors_the_preset_augmentations():
    augment = build_config("vicreg", "cifar10").augment
    transform = reference.torchvision_transform(augment, 32)
    kinds = [type(t).__name__ for t in transform.transforms]
    assert kinds == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply",
                     "RandomGrayscale", "RandomApply", "RandomSolarize", "ToTensor", "Normalize"]
    crop, flip, jitter = transform.transforms[:3]
    assert crop.scale == tuple(augment.crop_scale) and flip.p == augment.hflip
    assert jitter.p == augment.jitter_prob and isinstance(jitter.transforms[0], T.ColorJitter)
    assert transform.transforms[-1].mean == augment.mean
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    views = reference.PILViews(images, transform, 2)
    assert views[0].shape == (2, 3, 32, 32) and views[0].dtype == torch.float32


def test_simvae_reference_loss_equals_the_methods_objective():
    """The reference loop's SimVAE loss is the method's own ELBO_SSL on the same views."""
    from selfsup.data.base import DataInfo
    from selfsup.methods import method_class

    config = build_config("simvae", "mnist")
    method = method_class("simvae")(config, DataInfo("mnist", (1, 28, 28), 10, True))
    views = torch.rand(4, config.model.n_views, 1, 28, 28)
    torch.manual_seed(0)
    got = reference.simvae_views_loss(method)(views)
    x = views.flatten(0, 1)
    mu, logvar = method.posterior(x)
    torch.manual_seed(0)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    assert torch.allclose(got, method.objective(x, z, mu, logvar)["loss"].mean())


def test_resnet32_part_runs_and_later_parts_keep_earlier_ones(tmp_path):
    out = tmp_path / "speed.json"
    tiny = ["--device", "cpu", "--data-dir", str(tmp_path), "--rounds", "1", "--workers", "0",
            "--threads", "1", "--out", str(out)]
    speed.main([*tiny, "--parts", "resnet32", "--resnet-methods", "simvae", "--resnet-batch", "4",
                "--resnet-steps", "5", "--resnet-images", "32"])
    first = json.loads(out.read_text())
    (row,) = first["resnet18_32px"]["rows"]
    assert row["method"] == "simvae" and row["batch_samples"] == 4
    assert row["selfsup_samples_per_s"] > 0 and row["reference_samples_per_s"] > 0
    assert row["speedup"] == pytest.approx(
        row["selfsup_samples_per_s"] / row["reference_samples_per_s"], rel=0.02)
    assert "synthetic" in first["resnet18_32px"]["data"] and first["device"] == "cpu"
    # a second run measuring another part keeps the first part, marked with its date
    speed.main([*tiny, "--parts", "resnet32", "--resnet-methods", "vicreg", "--resnet-batch", "4",
                "--resnet-steps", "5", "--resnet-images", "32"])
    second = json.loads(out.read_text())
    assert [r["method"] for r in second["resnet18_32px"]["rows"]] == ["vicreg"]
    out.write_text(json.dumps({**second, "simvae": {"rows": [1]}}))
    kept = speed._previous_parts(out, {"device": "cpu", "resnet18_32px": {}})
    assert kept == {"simvae": {"rows": [1], "measured": second["machine"]["date"],
                               "matmul_peak": second["matmul_peak"]}}
    assert speed._previous_parts(out, {"device": "cuda"}) == {}  # never mixes devices


def test_methods_part_reports_flops_and_fraction_of_peak(tmp_path):
    from fixtures import write_idx_dataset

    write_idx_dataset(tmp_path, "mnist", n_train=64, n_test=16)
    out = tmp_path / "speed.json"
    speed.main(["--device", "cpu", "--data-dir", str(tmp_path), "--threads", "1", "--parts",
                "methods", "--methods", "simvae", "hvae", "--methods-batch", "8",
                "--methods-steps", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    peak = result["matmul_peak"]["fp32_gflops"]
    rows = {r["method"]: r for r in result["methods"]["rows"]}
    # SimVAE's MLP 784-2000-500-500-2z / z-500-500-2000-784 with z = 10, J = 2 views, by hand:
    # per image 2 FLOPs per weight forward, twice that backward (input and weight gradients),
    # except that the first layer needs no gradient for its input (the images)
    weights = 784 * 2000 + 2000 * 500 + 500 * 500 + 500 * 20 + 10 * 500 + 500 * 500 + 500 * 2000
    weights += 2000 * 784
    per_image = 6 * weights - 2 * 784 * 2000
    assert rows["simvae"]["model_mflop_per_sample"] == pytest.approx(2 * per_image / 1e6,
                                                                      abs=0.06)
    for row in rows.values():
        expected = row["samples_per_s"] * row["model_mflop_per_sample"] / 1e3 / peak
        assert row["fraction_of_fp32_peak"] == pytest.approx(expected, rel=0.02, abs=2e-3)
        assert row["peak_rss_mib"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        speed.main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err


def test_too_few_steps_for_a_rate_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        speed.main(["--device", "cpu", "--resnet-steps", "4"])
    assert "--resnet-steps 4 is too few" in capsys.readouterr().err


def test_sync_count_part_refuses_the_cpu():
    with pytest.raises(SystemExit, match="needs a GPU"):
        speed.main(["--device", "cpu", "--parts", "syncs", "--out", "/dev/null"])
