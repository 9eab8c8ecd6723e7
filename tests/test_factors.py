"""Factor probes (selfsup.evaluate.factors) against scikit-learn's Ridge / RidgeClassifier: the
released protocol (alpha 1, no intercept) and ours (alpha selected on the in-distribution heldout
split only), and `selfsup eval factors` end to end on a tiny procedural dSprites run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.metrics import r2_score as sk_r2

from selfsup import cli, pipelines
from selfsup.data import dsprites
from selfsup.data.splits import unravel_factors
from selfsup.errors import ConfigError
from selfsup.evaluate.factors import (
    RidgeSolver,
    _predict,
    evaluate_factors,
    factor_probes,
    format_table,
    r2_score,
)

SMALL_DSPRITES = (1, 3, 2, 4, 4, 4)


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.normal(size=d)  # non-centred columns test the intercept
    w = rng.normal(size=(d, 3))
    return x, x @ w + 0.5 * rng.normal(size=(n, 3))


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 50.0])
@pytest.mark.parametrize("n,d", [(60, 5), (20, 40)])  # over- and under-determined
def test_ridge_solver_matches_sklearn(alpha, n, d):
    x, y = _data(n, d, 0)
    solver = RidgeSolver(torch.from_numpy(x))
    proj, y_mean = solver.project(torch.from_numpy(y))
    w, b = solver.coef(proj, y_mean, alpha)
    ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(x, y)
    np.testing.assert_allclose(w.numpy().T, ref.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=1e-7, atol=1e-9)
    x_new = np.random.default_rng(1).normal(size=(7, d))
    np.testing.assert_allclose(_predict(torch.from_numpy(x_new), w, b).numpy(),
                               ref.predict(x_new), rtol=1e-7, atol=1e-8)
    z = solver.transform(torch.from_numpy(x_new))  # the path the probes use
    proj_z, _ = solver.project(torch.from_numpy(y), solver.transform(torch.from_numpy(x)))
    np.testing.assert_allclose(solver.predict(z, proj_z, y_mean, alpha).numpy(),
                               ref.predict(x_new), rtol=1e-7, atol=1e-8)


def test_r2_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=50), rng.normal(size=50)
    assert r2_score(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sk_r2(y, p))
    const = np.ones(5)
    assert r2_score(torch.from_numpy(const), torch.from_numpy(const)) == 1.0
    assert r2_score(torch.from_numpy(const), torch.zeros(5, dtype=torch.float64)) == 0.0


def _factor_problem(seed: int = 0):
    """Features that carry a categorical factor (4 classes, one absent from train), a binary one
    and a continuous one with noise, in four splits."""
    rng = np.random.default_rng(seed)
    splits = {"train": 120, "heldout": 30, "val": 40, "test": 50}
    feats, facts, vals = {}, {}, {}
    for s, n in splits.items():
        c4 = rng.integers(0, 3 if s == "train" else 4, n)
        c2 = rng.integers(0, 2, n)
        cont = rng.integers(0, 10, n)
        x = np.concatenate([
            np.eye(4)[c4] + 0.8 * rng.normal(size=(n, 4)),
            (2 * c2 - 1)[:, None] + rng.normal(size=(n, 1)),
            cont[:, None] / 10 + 0.3 * rng.normal(size=(n, 1)),
            rng.normal(size=(n, 6)),
        ], axis=1)
        feats[s] = torch.from_numpy(x)
        facts[s] = torch.from_numpy(np.stack([c4, c2, cont], axis=1))
        vals[s] = torch.from_numpy(np.stack([c4, c2, cont * 0.1 + 0.5], axis=1).astype(float))
    return feats, facts, vals


def test_factor_probes_match_sklearn_on_every_split():
    feats, facts, vals = _factor_problem()
    alphas = [0.01, 1.0, 30.0, 1000.0]
    rows = factor_probes({"features": feats}, facts, vals, ["c4", "c2", "cont"],
                         ["categorical", "categorical", "continuous"], alphas)
    assert [r["factor"] for r in rows] == ["c4", "c2", "cont"]
    for f, row in enumerate(rows):
        x_train = feats["train"].numpy()
        # selection: recompute every alpha's heldout score with scikit-learn, take the best
        sel_scores = {}
        for alpha in alphas:
            if row["kind"] == "categorical":
                model = RidgeClassifier(alpha=alpha, solver="svd").fit(
                    x_train, facts["train"][:, f].numpy())
                sel_scores[alpha] = model.score(feats["heldout"].numpy(),
                                                facts["heldout"][:, f].numpy())
            else:
                model = Ridge(alpha=alpha, solver="svd").fit(x_train, vals["train"][:, f].numpy())
                sel_scores[alpha] = sk_r2(vals["heldout"][:, f].numpy(),
                                          model.predict(feats["heldout"].numpy()))
        for alpha in alphas:
            assert row["selection_scores"][repr(alpha)] == pytest.approx(sel_scores[alpha])
        best = max(sel_scores.values())
        assert row["alpha"] == max(a for a, v in sel_scores.items() if v == best)
        if row["kind"] == "categorical":
            ref = RidgeClassifier(alpha=row["alpha"], solver="svd").fit(
                x_train, facts["train"][:, f].numpy())
            for s in feats:
                assert row[s] == pytest.approx(ref.score(feats[s].numpy(), facts[s][:, f].numpy()))
        else:
            ref = Ridge(alpha=row["alpha"], solver="svd").fit(x_train, vals["train"][:, f].numpy())
            for s in feats:
                assert row[s] == pytest.approx(
                    sk_r2(vals[s][:, f].numpy(), ref.predict(feats[s].numpy())))
    assert rows[0]["test"] < 1.0  # class 3 never seen in train is never predicted


def test_released_protocol_is_sklearn_ridge_without_intercept_alpha_1():
    """eval_tools.py:125-127: RidgeClassifier / Ridge(fit_intercept=False), default alpha 1, fit
    on train, scored on every split; no selection."""
    feats, facts, vals = _factor_problem(2)
    rows = factor_probes({"features": feats}, facts, vals, ["c4", "c2", "cont"],
                         ["categorical", "categorical", "continuous"], [1.0], None, False)
    x_train = feats["train"].numpy()
    for f, row in enumerate(rows):
        assert row["alpha"] == 1.0 and "selection_scores" not in row
        if row["kind"] == "categorical":
            ref = RidgeClassifier(fit_intercept=False).fit(x_train, facts["train"][:, f].numpy())
            for s in feats:
                assert row[s] == pytest.approx(ref.score(feats[s].numpy(), facts[s][:, f].numpy()))
        else:
            ref = Ridge(fit_intercept=False).fit(x_train, vals["train"][:, f].numpy())
            for s in feats:
                assert row[s] == pytest.approx(
                    sk_r2(vals[s][:, f].numpy(), ref.predict(feats[s].numpy())))
    # the intercept matters here (non-centred features and targets): the protocols differ
    tuned = factor_probes({"features": feats}, facts, vals, ["c4", "c2", "cont"],
                          ["categorical", "categorical", "continuous"], [1.0], None, True)
    assert tuned[2]["test"] != pytest.approx(rows[2]["test"])
    with pytest.raises(ConfigError, match="one alpha"):
        factor_probes({"f": feats}, facts, vals, ["a", "b", "c"],
                      ["categorical", "categorical", "continuous"], [1.0, 2.0], None)


def test_ridge_solver_without_intercept_matches_sklearn():
    x, y = _data(30, 6, 3)
    solver = RidgeSolver(torch.from_numpy(x), fit_intercept=False)
    proj, y_mean = solver.project(torch.from_numpy(y))
    w, b = solver.coef(proj, y_mean, 1.0)
    ref = Ridge(alpha=1.0, fit_intercept=False).fit(x, y)
    np.testing.assert_allclose(w.numpy().T, ref.coef_, rtol=1e-7, atol=1e-9)
    assert float(b.abs().max()) == 0.0


def test_selection_never_looks_at_the_ood_splits():
    feats, facts, vals = _factor_problem(1)
    names, kinds = ["c4", "c2", "cont"], ["categorical", "categorical", "continuous"]
    rows = factor_probes({"f": feats}, facts, vals, names, kinds)
    gen = torch.Generator().manual_seed(0)
    for s in ("test", "val"):
        perm = torch.randperm(facts[s].shape[0], generator=gen)
        facts[s], vals[s] = facts[s][perm], vals[s][perm]
    again = factor_probes({"f": feats}, facts, vals, names, kinds)
    assert [r["alpha"] for r in rows] == [r["alpha"] for r in again]
    assert [r["heldout"] for r in rows] == [r["heldout"] for r in again]


def test_bad_alphas_and_single_class():
    feats, facts, vals = _factor_problem()
    with pytest.raises(ConfigError):
        factor_probes({"f": feats}, facts, vals, ["a", "b", "c"],
                      ["categorical", "categorical", "continuous"], alphas=[0.0])
    facts = {s: f.clone() for s, f in facts.items()}
    facts["train"][:, 1] = 0
    rows = factor_probes({"f": feats}, facts, vals, ["a", "b", "c"],
                         ["categorical", "categorical", "continuous"])
    assert "skipped" in rows[1] and "alpha" in rows[2]
    assert "skipped" in format_table({"results": rows, "splits": {"train": 1}})


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture
def small_dsprites(monkeypatch):
    monkeypatch.setattr(dsprites, "GRID_SIZES", SMALL_DSPRITES)


def _train_tiny(tmp_path, *extra: str) -> str:
    run = str(tmp_path / "run")
    code = cli.main([
        "train", "byol", "--dataset", "dsprites-procedural", "--data-dir", str(tmp_path),
        "--epochs", "1", "--batch-size", "16", "--out", run, "--no-progress", "--json",
        "--set", "data.ood_k=2", "--set", "model.width=4", "--set", "model.proj_dims=[16,16]",
        "--set", "model.pred_hidden=16", "--set", "trainer.plots=false",
        "--set", "data.num_workers=0", "--set", "data.heldout_split=fraction", *extra,
    ])
    assert code == 0
    return run


def test_eval_factors_end_to_end(tmp_path, small_dsprites, capsys):
    run = _train_tiny(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", "factors", "--run", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # tiny grid: orientation < 1, quadrants at 2: 96 images; K=2 trains on half of them
    assert result["splits"] == {"train": 43, "heldout": 5, "val": 24, "test": 24}
    assert result["ood_k"] == 2 and result["split_scheme"] == "ood"
    assert result["representations"] == ["features"]
    rows = {r["factor"]: r for r in result["results"]}
    assert rows["shape"]["metric"] == "accuracy" and rows["posX"]["metric"] == "r2"
    assert "skipped" in rows["orientation"]  # a single orientation in this tiny grid
    for name in ("shape", "scale", "posX", "posY"):
        for s in ("train", "heldout", "val", "test"):
            assert np.isfinite(rows[name][s])
    with open(result["json_file"]) as fh:
        assert json.load(fh)["results"] == result["results"]
    assert cli.main(["eval", "factors", "--run", run, "--max-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "val(OOD)" in out and "posY" in out and "train 10" in out
    assert result["protocol"] == "released" and result["selection"] == "none"
    assert all(r["alpha"] == 1.0 for r in result["results"] if "alpha" in r)
    assert cli.main(["eval", "factors", "--run", run, "--protocol", "tuned", "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["selection"] == "heldout" and tuned["fit_intercept"]
    assert cli.main(["eval", "factors", "--run", run, "--epochs", "3"]) == 2
    assert cli.main(["eval", "factors", "--run", run, "--protocol", "sgd"]) == 2
    assert cli.main(["eval", "linear", "--run", run, "--protocol", "tuned"]) == 2
    assert cli.main(["eval", "linear", "--run", run, "--max-samples", "3"]) == 2


def test_eval_factors_reports_the_code_when_the_method_has_one(tmp_path, small_dsprites):
    """A stand-in method whose code is a one-hot of the true shape: the code row classifies the
    shape perfectly on every split, the features row does not see it."""
    config = pipelines.build_config("byol", "dsprites-procedural",
                                    sets=["data.ood_k=1", "data.heldout_fraction=0.2",
                                          "data.heldout_split=fraction"])
    config.data.dir = str(tmp_path)

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = config

        def preprocess(self, images):
            return images.float() / 255

        def encode(self, x):  # mass and centre of the sprite
            rows = torch.arange(64.0).view(1, 1, 64, 1)
            mass = x.sum(dim=(1, 2, 3))
            return torch.stack([mass, (x * rows).sum(dim=(1, 2, 3)) / mass, torch.ones_like(mass)
                                ], dim=1)

        def code(self, x):  # one-hot of the true shape, looked up from the sprite's area
            shape = torch.tensor([LOOKUP[float(k)] for k in x.flatten(1).sum(1)])
            return torch.nn.functional.one_hot(shape, 3).float()

    images = torch.from_numpy(dsprites.render_dsprites(np.arange(int(np.prod(SMALL_DSPRITES))),
                                                       SMALL_DSPRITES)).float() / 255
    shapes = unravel_factors(np.arange(images.shape[0]), SMALL_DSPRITES)[:, 1]
    LOOKUP = {}
    for area, s in zip(images.flatten(1).sum(1).tolist(), shapes.tolist(), strict=True):
        assert LOOKUP.setdefault(area, s) == s  # the area identifies the shape in this grid
    result = evaluate_factors(Stub())
    assert result["representations"] == ["features", "code"]
    code_shape = next(r for r in result["results"]
                      if r["representation"] == "code" and r["factor"] == "shape")
    assert all(code_shape[s] == 1.0 for s in ("train", "heldout", "val", "test"))
    table = format_table(result)
    assert table.count("code") >= 4
    with pytest.raises(ConfigError):
        evaluate_factors(Stub(), max_samples=-1)


def test_eval_factors_refuses_datasets_without_factors():
    config = pipelines.build_config("byol", "digits")
    with pytest.raises(ConfigError, match="no ground-truth factors"):
        evaluate_factors(SimpleNamespace(config=config, training=False))


def test_subset_loading_equals_load_then_subsample(tmp_path, small_dsprites):
    from selfsup.data.splits import subsample_positions
    from selfsup.evaluate.factors import _load_split

    config = pipelines.build_config("byol", "dsprites-procedural",
                                    sets=["data.ood_k=1", "data.heldout_split=fraction"])
    config.data.dir = str(tmp_path)
    direct = _load_split(config, "test", None, 7, 3)  # renders only the 7 images
    full = pipelines.load_split(config, "test")
    ref = full.subset(subsample_positions(len(full), 7, 3))
    assert len(direct) == 7
    assert torch.equal(direct.images, ref.images) and torch.equal(direct.factors, ref.factors)
    assert len(_load_split(config, "test", None, 0, 3)) == len(full)


def test_mpi3d_train_and_eval_factors_through_the_memmap(tmp_path, monkeypatch, capsys):
    from selfsup.data import mpi3d

    sizes = (6, 6, 2, 1, 1, 2, 2)
    monkeypatch.setattr(mpi3d, "GRID_SIZES", sizes)
    n = int(np.prod(sizes))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    (tmp_path / "mpi3d").mkdir()
    np.savez(tmp_path / "mpi3d" / "mpi3d_toy.npz", images=images)
    assert cli.main(["data", "prepare", "mpi3d", "--data-dir", str(tmp_path)]) == 0
    run = str(tmp_path / "run")
    assert cli.main([
        "train", "simclr", "--dataset", "mpi3d-toy", "--data-dir", str(tmp_path), "--epochs",
        "1", "--batch-size", "32", "--out", run, "--no-progress", "--json",
        "--set", "model.width=4", "--set", "model.proj_dims=[16,16]", "--set",
        "trainer.plots=false", "--set", "data.num_workers=0", "--set", "trainer.val_every=0",
    ]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "factors", "--run", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # K=3 of the 6 colour-shape diagonals: 3 * 6 * 8 = 144 images, 10% held out
    assert result["splits"] == {"train": 130, "heldout": 14, "val": 48, "test": 96}
    kinds = {r["factor"]: r["metric"] for r in result["results"]}
    assert kinds == {"color": "accuracy", "shape": "accuracy", "size": "accuracy",
                     "height": "accuracy", "background": "accuracy", "horizontal": "r2",
                     "vertical": "r2"}
