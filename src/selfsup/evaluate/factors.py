"""Factor probes: how well frozen representations predict each generative factor, in and out of
distribution (dSprites, MPI3D).

For a representation X (N, D) (the L2-normalised backbone features ``h / ||h||``, and the discrete
code, the argmax one-hot per group, when the method has one) every factor gets a ridge model with
an intercept, exactly scikit-learn's ``Ridge`` / ``RidgeClassifier``:

    W(alpha), b = argmin ||Y - X W - 1 b^T||_F^2 + alpha ||W||_F^2,

solved in closed form from the centred train Gram matrix ``Xc^T Xc = V diag(s) V^T`` (the kernel
matrix ``Xc Xc^T`` when N < D; computed once per representation, shared by all factors and alphas):
``W = V diag(1 / (s + alpha)) V^T Xc^T Yc`` and ``b = mean(Y) - W^T mean(X)``.

- categorical factors: ``Y`` codes the classes seen in train as +1 / -1 columns (one-vs-all); the
  prediction is the arg-max column; metric accuracy;
- continuous factors: ``Y`` is the factor value; metric ``R^2 = 1 - SS_res / SS_tot``.

Models are fit on ``train``; alpha is chosen per (representation, factor) by the score on ``val``
only (the out-of-distribution validation split; ties go to the larger alpha), and the chosen model
is scored on ``train``, ``heldout`` (in-distribution), ``val`` and ``test`` (out-of-distribution).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import ConfigError, DataError

__all__ = [
    "ALPHAS",
    "RidgeSolver",
    "evaluate_factors",
    "factor_probes",
    "format_table",
    "r2_score",
]

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
EVAL_SPLITS = ("train", "heldout", "val", "test")
RESULT_NAME = "factors"  # saved as RUN_DIR/eval/factors.json
CHUNK = 8192


class RidgeSolver:
    """Closed-form ridge regression with intercept for one design matrix and many targets/alphas.

    ``X`` (N, D) is centred by its column means. With N >= D the eigendecomposition of the Gram
    matrix ``Xc^T Xc = V diag(s) V^T`` gives ``W = V diag(1 / (s + alpha)) V^T Xc^T Yc``; with
    N < D the kernel matrix ``Xc Xc^T = U diag(s) U^T`` gives the same ``W = Xc^T U diag(1 / (s +
    alpha)) U^T Yc``. Either is computed once (float64, accumulated over row chunks).
    """

    def __init__(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[0] < 2:
            raise DataError(
                f"A ridge probe needs a 2-D feature matrix with at least 2 rows, got "
                f"{tuple(x.shape)}. Use a larger train split."
            )
        self.x = x
        self.mean = x.double().mean(dim=0)
        n, d = x.shape
        self.dual = n < d
        if self.dual:
            self.xc = x.double() - self.mean
            evals, self.evecs = torch.linalg.eigh(self.xc @ self.xc.T)
        else:
            gram = torch.zeros(d, d, dtype=torch.float64)
            for start in range(0, n, CHUNK):
                xc = x[start : start + CHUNK].double() - self.mean
                gram += xc.T @ xc
            evals, self.evecs = torch.linalg.eigh(gram)
        self.evals = evals.clamp_min(0.0)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """``Z = (x - mean) V`` (primal) or ``(x - mean) Xc^T U`` (dual), float64, so that the
        prediction for any alpha is ``Z diag(1 / (s + alpha)) P + mean(Y)`` (see :meth:`predict`).
        """
        out = []
        for start in range(0, x.shape[0], CHUNK):
            xc = x[start : start + CHUNK].double() - self.mean
            if self.dual:
                xc = xc @ self.xc.T
            out.append(xc @ self.evecs)
        return torch.cat(out) if out else torch.zeros(0, self.evecs.shape[1], dtype=torch.float64)

    def project(self, y: torch.Tensor, z_train: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, mean(Y))`` with ``P = V^T Xc^T Yc`` (primal) or ``U^T Yc`` (dual) for targets
        ``y`` (N, K) float64; ``z_train`` is :meth:`transform` of the train rows (primal only)."""
        y_mean = y.mean(dim=0)
        if self.dual:
            return self.evecs.T @ (y - y_mean), y_mean
        if z_train is None:
            z_train = self.transform(self.x)
        return z_train.T @ (y - y_mean), y_mean

    def predict(self, z: torch.Tensor, projected: torch.Tensor, y_mean: torch.Tensor,
                alpha: float) -> torch.Tensor:
        """Predictions (N, K) ``x W + b`` for ``alpha`` from ``z = transform(x)``."""
        return z @ (projected / (self.evals + float(alpha))[:, None]) + y_mean

    def coef(self, projected: torch.Tensor, y_mean: torch.Tensor, alpha: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (D, K) and intercept (K,) for ``alpha`` from :meth:`project`'s output."""
        inner = self.evecs @ (projected / (self.evals + float(alpha))[:, None])
        w = self.xc.T @ inner if self.dual else inner
        return w, y_mean - self.mean @ w


def _predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = [x[s : s + CHUNK].double() @ w + b for s in range(0, x.shape[0], CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, w.shape[1], dtype=torch.float64)


def r2_score(y: torch.Tensor, pred: torch.Tensor) -> float:
    """``1 - sum (y - pred)^2 / sum (y - mean y)^2`` (1 if both are 0, 0 if only SS_tot is)."""
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _scorer(kind: str, classes: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                    float]:
    if kind == "categorical":
        assert classes is not None

        def accuracy(target: torch.Tensor, scores: torch.Tensor) -> float:
            pred = classes[scores.argmax(dim=1)]
            return float((pred == target.long()).double().mean()) if target.numel() else 0.0

        return accuracy

    def r2(target: torch.Tensor, scores: torch.Tensor) -> float:
        return r2_score(target.double(), scores[:, 0])

    return r2


def factor_probes(
    reps: dict[str, dict[str, torch.Tensor]],
    factors: dict[str, torch.Tensor],
    values: dict[str, torch.Tensor],
    names: Sequence[str],
    kinds: Sequence[str],
    alphas: Sequence[float] = ALPHAS,
    select_on: str = "val",
) -> list[dict[str, Any]]:
    """Ridge probes of every factor from every representation.

    ``reps[rep][split]`` features (N_split, D); ``factors[split]`` class indices (N_split, F);
    ``values[split]`` factor values (N_split, F) (regression targets). Splits must include
    ``train`` and ``select_on``. Returns one dict per (representation, factor) with the chosen
    ``alpha``, the score on every split and ``selection_scores`` (score on ``select_on`` per
    alpha).
    """
    alphas = sorted(float(a) for a in alphas)
    if not alphas or any(a <= 0 for a in alphas):
        raise ConfigError(f"Ridge alphas must be a non-empty list of positive numbers: {alphas}.")
    if "train" not in factors or select_on not in factors:
        raise DataError(f"Factor probes need the train and {select_on} splits.")
    splits = list(factors)
    rows: list[dict[str, Any]] = []
    for rep, feats in reps.items():
        solver = RidgeSolver(feats["train"])
        z = {s: solver.transform(feats[s]) for s in splits}
        for f, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            if kind == "categorical":
                y_train = factors["train"][:, f].long()
                classes = torch.unique(y_train)
                target = {s: factors[s][:, f].long() for s in splits}
                y = torch.where(y_train[:, None] == classes[None, :], 1.0, -1.0).double()
                metric = "accuracy"
            else:
                classes = None
                target = {s: values[s][:, f].double() for s in splits}
                y = target["train"][:, None]
                metric = "r2"
            row: dict[str, Any] = {
                "representation": rep, "factor": name, "kind": kind, "metric": metric,
            }
            if kind == "categorical" and classes.numel() < 2:
                rows.append({**row, "skipped": "a single class in the train split"})
                continue
            score = _scorer(kind, classes)
            projected, y_mean = solver.project(y, z["train"])
            selection: dict[str, float] = {}
            best: tuple[float, float] | None = None
            for alpha in alphas:
                value = score(target[select_on],
                              solver.predict(z[select_on], projected, y_mean, alpha))
                selection[repr(alpha)] = value
                if best is None or value >= best[1]:  # ascending grid: ties -> larger alpha
                    best = (alpha, value)
            assert best is not None
            row["alpha"] = best[0]
            for s in splits:
                row[s] = score(target[s], solver.predict(z[s], projected, y_mean, best[0]))
            row["selection_scores"] = selection
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------- from a run
def _load_split(config: Any, split: str, data_dir: str | Path | None, max_samples: int,
                seed: int) -> Any:
    """The split, or a seeded random subset of ``max_samples`` of it (loaded directly by the
    dataset's ``load_subset`` when it has one, e.g. dSprites renders / reads only those)."""
    from selfsup.data.splits import subsample_positions
    from selfsup.pipelines import dataset_options, dataset_spec, load_split

    load_subset = dataset_spec(config.data.name).extra.get("load_subset")
    if max_samples and load_subset is not None:
        return load_subset(Path(data_dir or config.data.dir).expanduser(), split,
                           dataset_options(config), max_samples, seed)
    dataset = load_split(config, split, data_dir)
    positions = subsample_positions(len(dataset), max_samples, seed)
    return dataset if positions is None else dataset.subset(positions)


def _factor_tensor(dataset: Any) -> torch.Tensor:
    factors = getattr(dataset, "factors", None)
    if factors is None:
        raise DataError(
            f"Dataset {dataset.name!r} has no ground-truth factors, so `selfsup eval factors` "
            "cannot probe it. Use a factor dataset: dsprites, dsprites-procedural or mpi3d-*."
        )
    return torch.as_tensor(factors).long()


@torch.no_grad()
def _representations(method: Any, dataset: Any, batch_size: int, device: str | torch.device
                     ) -> dict[str, torch.Tensor]:
    from selfsup.evaluate.features import frozen_features

    dims: dict[str, int] = {}

    def both(images: torch.Tensor) -> torch.Tensor:
        x = method.preprocess(images)
        h = method.encode(x).float().flatten(1)
        code_fn = getattr(method, "code", None)
        c = code_fn(x) if code_fn is not None else None
        dims["features"] = h.shape[1]
        if c is None:
            return h
        dims["code"] = c.shape[1]
        return torch.cat([h, c.float().flatten(1)], dim=1)

    out, _ = frozen_features(method, dataset, batch_size, device, represent=both)
    h = out[:, : dims["features"]]
    reps = {"features": h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)}
    if "code" in dims:
        reps["code"] = out[:, dims["features"] :]
    return reps


def evaluate_factors(
    method: Any,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    max_samples: int = 0,
    alphas: Sequence[float] = ALPHAS,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Factor probes of a trained method on its dataset's train / heldout / val / test splits.

    ``max_samples`` > 0 keeps at most that many samples of each split (a seeded random subset) to
    bound the cost. Returns a JSON-serialisable dict (see :func:`factor_probes` for ``results``).
    """
    from selfsup.data.splits import resolve_ood_k
    from selfsup.pipelines import dataset_spec

    if max_samples < 0:
        raise ConfigError(f"max_samples must be >= 0 (0: every sample), got {max_samples}.")
    config = method.config
    spec = dataset_spec(config.data.name)
    info_fn = spec.extra.get("factors")
    if info_fn is None:
        raise ConfigError(
            f"Dataset {spec.name!r} has no ground-truth factors, so `selfsup eval factors` cannot "
            "probe it. Train on dsprites, dsprites-procedural or mpi3d-toy|realistic|real."
        )
    info = info_fn()
    started = time.perf_counter()
    reps: dict[str, dict[str, torch.Tensor]] = {}
    factors: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    for i, split in enumerate(EVAL_SPLITS):
        dataset = _load_split(config, split, data_dir, max_samples, seed + i)
        if len(dataset) == 0:
            if split == "heldout":
                continue
            raise DataError(f"The {split} split of {spec.name} is empty; nothing to probe.")
        factors[split] = _factor_tensor(dataset)
        sizes[split] = len(dataset)
        for rep, x in _representations(method, dataset, batch_size, device).items():
            reps.setdefault(rep, {})[split] = x
    values = {s: info.factor_values(f) for s, f in factors.items()}
    rows = factor_probes(reps, factors, values, info.names, info.kinds, alphas)
    return {
        "probe": "factors",
        "method": config.method,
        "dataset": spec.name,
        "split_scheme": config.data.split_scheme,
        "ood_k": resolve_ood_k(spec.name, config.data.ood_k),
        "splits": sizes,
        "representations": list(reps),
        "alphas": [float(a) for a in alphas],
        "selection": "val",
        "results": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }


def save_result(result: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``result`` as the run's ``eval/factors.json``; returns the path."""
    from selfsup.rundir import RunFolder

    return RunFolder(run_dir).save_evaluation(RESULT_NAME, result)


def format_table(result: dict[str, Any]) -> str:
    """A text table: one row per (factor, representation), one column per split."""
    splits = [s for s in EVAL_SPLITS if s in result.get("splits", {})]
    labels = {"val": "val(OOD)", "test": "test(OOD)", "heldout": "heldout(ID)"}
    if result.get("split_scheme") == "iid":
        labels = {}
    head = ["factor", "kind", "metric", "repr", "alpha"] + [labels.get(s, s) for s in splits]
    lines, notes = [], []
    for row in result["results"]:
        kind = "class" if row["kind"] == "categorical" else "regr"
        cells = [row["factor"], kind, row["metric"], row["representation"]]
        if "skipped" in row:
            lines.append(cells + ["-"] * (1 + len(splits)))
            notes.append(f"  (skipped: {row['skipped']})")
            continue
        cells.append(f"{row['alpha']:g}")
        cells += [f"{row[s]:.3f}" for s in splits]
        lines.append(cells)
        notes.append("")
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    sizes = ", ".join(f"{s} {n}" for s, n in result.get("splits", {}).items())
    out = [
        f"Factor probes of {result.get('method')} on {result.get('dataset')} "
        f"(split {result.get('split_scheme')}, K={result.get('ood_k')}; {sizes}); "
        "ridge alpha chosen on val:",
        fmt.format(*head).rstrip(),
    ]
    out += [(fmt.format(*r) + note).rstrip() for r, note in zip(lines, notes, strict=True)]
    return "\n".join(out)
