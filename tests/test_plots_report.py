"""Figures of a run, `selfsup report` and `selfsup compare`: files exist, are real images with
content, agree with the numbers they show, and the HTML page renders in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_vae_flags
from selfsup import cli, plots
from selfsup.pipelines import build_config, load_split, train

FIGURES = (
    "loss_curves",
    "online_probe",
    "embedding",
    "reconstructions",
    "samples",
    "latent_traversals",
)


def assert_png(path: Path, min_side: int = 60) -> np.ndarray:
    """A decodable PNG of reasonable size that is not a single flat colour; returns RGB pixels."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side, (path, image.size)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5.0, f"{path} is (nearly) one colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, path
    return pixels


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch tiny VAE on digits with figures on (t-SNE embedding)."""
    run_dir = tmp_path_factory.mktemp("plots") / "vae"
    flags = tiny_vae_flags(epochs=2, plots=True, embedding_plot="tsne")
    method, result = train(build_config("vae", "digits", flags=flags), run_dir)
    return run_dir, method, result


# ------------------------------------------------------------------------------- run figures
def test_run_writes_every_figure_and_tensorboard(tiny_run):
    run_dir, method, result = tiny_run
    for name in FIGURES:
        assert_png(run_dir / "images" / f"{name}.png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    for name in FIGURES:
        assert f"images/{name}" in tags, tags
    # drawn while training (end of epoch 1) and again at the end, at those global steps
    steps = [e.step for e in events.Images("images/loss_curves")]
    assert steps == [result.global_step // 2, result.global_step], steps
    assert [e.step for e in events.Images("images/embedding")] == [result.global_step]
    encoded = events.Images("images/loss_curves")[-1].encoded_image_string
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    on_disk = np.asarray(Image.open(run_dir / "images" / "loss_curves.png").convert("RGB"))
    assert decoded.shape == on_disk.shape and np.array_equal(decoded, on_disk)
    info = json.loads((run_dir / "training.json").read_text())
    assert info["global_step"] == result.global_step and info["seconds"] > 0


def test_read_metrics_and_curves_from_a_written_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss_epoch,train/loss_step,train/kl_step,val/online_probe_acc,"
            "train/online_probe_acc_step"]
    for step in range(0, 40, 2):
        rows.append(f"0,{step},,{10 - step / 10},{step / 100},,{step / 40}")
    rows.append("0,39,9.0,,,0.5,")
    rows.append("1,79,8.0,,,0.75,")
    csv.write_text("\n".join(rows) + "\n")
    series = plots.read_metrics(csv)
    assert series["train/loss_step"][:2] == [(0, 10.0), (2, 9.8)]
    assert series["val/online_probe_acc"] == [(39, 0.5), (79, 0.75)]
    assert "epoch" not in series and len(series["train/kl_step"]) == 20
    terms = plots._loss_terms(series)
    assert list(terms) == ["train/loss", "train/kl"]  # probe columns excluded, loss first
    assert_png(plots.plot_loss_curves(csv, tmp_path / "loss.png"))
    assert_png(plots.plot_probe_curve(csv, tmp_path / "probe.png"))
    assert plots.plot_loss_curves(tmp_path / "missing.csv", tmp_path / "x.png") is None


def test_moving_average_matches_numpy():
    values = np.random.default_rng(0).normal(size=50)
    window = 7
    expected = [values[max(0, i - window + 1) : i + 1].mean() for i in range(values.size)]
    np.testing.assert_allclose(plots._smooth(values, window), expected, rtol=1e-12)


def test_tsne_separates_separated_clusters(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=20.0, size=(4, 30))
    labels = np.repeat(np.arange(4), 60)
    feats = centers[labels] + rng.normal(size=(labels.size, 30))
    for kind in ("tsne", "umap", "pca"):
        xy = plots.embed_2d(feats, kind)
        assert xy.shape == (labels.size, 2)
        # 1-nearest-neighbour label agreement in the 2-D map (leave-one-out)
        dist = ((xy[:, None] - xy[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        assert (labels[dist.argmin(1)] == labels).mean() > 0.95, kind
    assert_png(plots.plot_embedding(feats, labels, tmp_path / "e.png", kind="pca"))
    with pytest.raises(ValueError):
        plots.embed_2d(feats, "umap-not-available")


def test_umap_without_umap_learn_is_a_clear_error(monkeypatch):
    import importlib.util
    import sys

    from selfsup.config import TrainerConfig
    from selfsup.errors import ConfigError

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    with pytest.raises(ImportError, match="pip install umap-learn"):
        plots.embed_2d(np.random.default_rng(0).normal(size=(20, 5)), "umap")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="umap-learn"):
        TrainerConfig(embedding_plot="umap").validate()


# --------------------------------------------------------------------------- latent traversal
@pytest.mark.parametrize("name", ["vae", "simvae", "aavae"])
def test_latent_and_decode_hooks_agree_with_reconstruct(name, tmp_path):
    from selfsup.data.base import DataInfo
    from selfsup.methods import method_class

    config = build_config(
        name, "digits", sets=["model.hidden=[16]", "model.latent_dim=3", "model.encoder=mlp"]
    )
    model = method_class(name)(config, DataInfo("digits", (1, 8, 8), 10, True)).eval()
    assert model.has_latents
    images = load_split(config, "test").images[:12]
    x = model.preprocess(images)
    torch.testing.assert_close(model.decode(model.latent(x)), model.reconstruct(x))
    path = plots.save_latent_traversals(model, images, tmp_path / "t.png", steps=5)
    assert_png(path)


def test_traversal_varies_exactly_one_coordinate(tmp_path):
    class Recorder(torch.nn.Module):
        """A fake latent model: latent = first 3 pixels, decode records its inputs."""

        generative = True
        seen: list[torch.Tensor] = []

        def __init__(self):
            super().__init__()
            from selfsup.data.augment import AugmentConfig, BatchAugment

            self.augment = BatchAugment(AugmentConfig(), (1, 8, 8))
            self.device = torch.device("cpu")

        def preprocess(self, images):
            return images.float() / 255

        def latent(self, x):
            return x.flatten(1)[:, :3] * torch.tensor([1.0, 2.0, 0.0])

        def decode(self, z):
            self.seen.append(z.clone())
            return torch.rand(z.shape[0], 1, 8, 8)

    model = Recorder()
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    plots.save_latent_traversals(model, images, tmp_path / "t.png", max_dims=2, steps=5, span=2.0)
    mu = model.latent(model.preprocess(images))
    assert len(model.seen) == 2  # the two coordinates with the largest spread: 0 and 1
    for d, z in zip((0, 1), model.seen, strict=True):
        others = [i for i in range(3) if i != d]
        torch.testing.assert_close(z[:, others], mu[:1, others].expand(5, -1))
        expected = mu[:, d].mean() + torch.linspace(-2, 2, 5) * mu[:, d].std()
        torch.testing.assert_close(z[:, d], expected)


# ------------------------------------------------------------------------------ factor scores
def test_factor_scores_from_dict_and_from_eval_factors_rows(tmp_path):
    simple = {"train": {"shape": 0.9, "scale": 0.5}, "test": {"shape": 0.7, "scale": 0.25}}
    assert plots.factor_scores_table(simple) == simple
    assert_png(plots.plot_factor_scores(simple, tmp_path / "a.png"))
    rows = {
        "probe": "factors",
        "splits": {"train": 100, "val": 20, "test": 20},
        "results": [
            {"factor": "shape", "kind": "categorical", "metric": "accuracy",
             "representation": "features", "alpha": 1.0, "train": 0.9, "val": 0.8, "test": 0.7},
            {"factor": "posX", "kind": "continuous", "metric": "r2",
             "representation": "features", "alpha": 1.0, "train": 0.6, "val": 0.5, "test": 0.4},
            {"factor": "color", "representation": "features", "skipped": "constant"},
        ],
    }
    path = tmp_path / "eval_factors.json"
    path.write_text(json.dumps(rows))
    table = plots.factor_scores_table(path)
    assert table == {
        "train": {"shape (accuracy)": 0.9, "posX (r2)": 0.6},
        "val": {"shape (accuracy)": 0.8, "posX (r2)": 0.5},
        "test": {"shape (accuracy)": 0.7, "posX (r2)": 0.4},
    }
    assert_png(plots.plot_factor_scores(path, tmp_path / "b.png"))
    with pytest.raises(ValueError):
        plots.factor_scores_table({"train": "nothing"})


# ------------------------------------------------------------------------------------ report
def test_eval_saves_json_and_report_shows_it(tiny_run, tmp_path, capsys):
    run_dir, _, _ = tiny_run
    assert cli.main(["eval", "knn", "--run", str(run_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert saved == json.loads(json.dumps(printed))
    factors = {"train": {"shape": 0.5}, "test": {"shape": 0.25}}
    (run_dir / "eval_factors.json").write_text(json.dumps(factors))
    out = tmp_path / "r.md"
    assert cli.main(["report", str(run_dir), "--out", str(out), "--format", "md"]) == 0
    text = out.read_text()
    header, _, row = text.splitlines()[:3]
    cells = dict(zip(header.strip("|").split("|"), row.strip("|").split("|"), strict=True))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    assert cells["method"] == "vae" and cells["dataset"] == "digits"
    assert cells["knn k20"] == f"{saved['accuracy_k20']:.4f}"
    assert cells["knn k200"] == f"{saved['accuracy_k200']:.4f}"
    assert cells["factors test (mean)"] == "0.2500"
    assert "vae/images/loss_curves.png)" in text  # figures linked relative to the report
    assert_png(run_dir / "images" / "factor_scores.png")


def test_report_and_compare_errors_are_one_paragraph(tmp_path, capsys):
    for args, fragment in (
        (["report", str(tmp_path)], "config.yaml is missing"),
        (["compare", "--preset", "no-such-preset"], "digits-all"),
        (["compare", "--methods", "vae,nope"], "nope"),
        (["compare", "--epochs", "0"], "--epochs"),
    ):
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("selfsup: error:") and fragment in err, err
        assert "Traceback" not in err and err.count("\n") == 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_compare_digits_all_end_to_end_and_in_a_browser(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup", "compare", "--preset", "digits-all", "--out", str(out),
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    methods = ["vae", "simvae", "aavae", "vicreg", "byol", "simclr", "barlowtwins", "mocosimclr"]
    assert list(summary["methods"]) == methods
    for name in methods:
        run = out / name
        evals = sorted(p.stem for p in (run / "eval").glob("*.json"))
        generative = name in ("vae", "simvae", "aavae")
        assert evals == (["gmm", "knn", "linear"] if generative else ["knn", "linear"]), name
        linear = json.loads((run / "eval" / "linear.json").read_text())
        assert linear["accuracy"] == summary["methods"][name]["linear"]
        config = (run / "config.yaml").read_text()
        assert "max_steps: 8" in config and "batch_size: 64" in config  # the shared budget
        assert_png(run / "images" / "loss_curves.png")
        assert_png(run / "images" / "embedding.png")
    md = (out / "report.md").read_text()
    assert md.count("| digits |") == len(methods)

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"]?https?:""", page)  # nothing fetched from a network
    sources = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(sources) >= 3 * len(methods)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 20
    for name in methods:  # figures link to their run folder
        assert f"href='{name}/images/loss_curves.png'" in page

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it); the page was not rendered")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,1400", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = assert_png(shot, min_side=1000)
    assert pixels.var() > 100.0  # a rendered table and figures, not a blank page
    top = pixels[:300]  # the comparison table's dark header row is rendered near the top
    assert (top.mean(axis=2) < 80).mean() > 0.01


def test_compare_goes_on_after_a_diverging_method(tmp_path, monkeypatch, capsys):
    """A method whose loss turns NaN is named and left out; the others are still reported."""
    from selfsup import pipelines
    from selfsup.errors import NonFiniteLossError

    real_train = pipelines.train

    def train_or_diverge(config, run_dir, *args, **kwargs):
        if config.method == "simclr":
            raise NonFiniteLossError("Training stopped at step 3: loss became NaN.")
        return real_train(config, run_dir, *args, **kwargs)

    monkeypatch.setattr(pipelines, "train", train_or_diverge)
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--preset", "digits-all", "--methods", "simclr,vicreg",
                     "--out", str(out), "--format", "md"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "simclr" in printed and "FAILED: Training stopped at step 3" in printed
    md = (out / "report.md").read_text()
    assert "| vicreg |" in md and "| simclr |" not in md
    # nothing left to report: a clear one-paragraph error, exit code 2
    assert cli.main(["compare", "--preset", "digits-all", "--methods", "simclr", "--out",
                     str(tmp_path / "none")]) == 2
    assert "Every method of the comparison failed (simclr" in capsys.readouterr().err
