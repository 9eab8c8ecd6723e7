"""Images and figures a run writes: reconstruction and sample grids, loss and online-probe
curves, 2-D embeddings of the representation, latent traversals and factor-score charts.

Every function writes one PNG and returns its path; :mod:`selfsup.callbacks` calls them while a
run trains, ``selfsup report`` embeds them in its page.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from selfsup.data.base import ImageDataset
from selfsup.rundir import IMAGE_DIR  # noqa: F401 - re-exported: figures live in RUN_DIR/images


def _grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)


@torch.no_grad()
def save_generative_grids(
    method: Any, dataset: ImageDataset, out_dir: Path, n: int = 32
) -> dict[str, Path]:
    """Write ``reconstructions.png`` (rows: input, reconstruction) and ``samples.png``.

    Returns the paths written. Works for any method with ``reconstruct`` and ``sample``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = method.training
    method.eval()
    images = dataset.images[:n].to(method.device)
    x = method.preprocess(images)
    x_vis = method.augment.to_float(images)
    recon = method.reconstruct(x)
    pairs = torch.stack([x_vis.float(), recon.float()], dim=1)  # (n, 2, C, H, W)
    rows = []
    for start in range(0, n, 8):
        block = pairs[start : start + 8]
        rows.append(block[:, 0])
        rows.append(block[:, 1])
    paths = {
        "reconstructions": out_dir / "reconstructions.png",
        "samples": out_dir / "samples.png",
    }
    save_image(_grid(torch.cat(rows)), paths["reconstructions"])
    save_image(_grid(method.sample(64)), paths["samples"])
    method.train(was_training)
    return paths


# ------------------------------------------------------------------------------ figures (Agg)
# Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas directly: no pyplot, no
# global backend state, safe inside training processes without a display.

LOSS_CURVES = "loss_curves.png"
PROBE_CURVE = "online_probe.png"
EMBEDDING = "embedding.png"
TRAVERSALS = "latent_traversals.png"
FACTOR_SCORES = "factor_scores.png"
EMBEDDINGS = ("tsne", "umap", "pca", "none")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, tight: bool = False) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", bbox_inches="tight" if tight else None)
    tmp.replace(path)
    return path


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The numeric columns of a Lightning ``metrics.csv``: column -> [(step, value), ...].

    Rows without a value in a column are skipped; the ``epoch`` and ``step`` columns are not
    returned as series. A missing file gives an empty dict.
    """
    path = Path(path)
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                continue
            for key, raw in row.items():
                if key in ("epoch", "step") or key is None or raw in (None, ""):
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    continue
                series.setdefault(key, []).append((step, value))
    return series


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or values.size < 3:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (csum[i + 1] - csum[lo]) / (i + 1 - lo)
    return out


def _loss_terms(series: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, list]]:
    """Group columns by loss term: {"train/loss": {"step": [...], "epoch": [...]}, "val/x": ...}."""
    terms: dict[str, dict[str, list]] = {}
    for key, points in series.items():
        if "online_probe" in key or not key.startswith(("train/", "val/")):
            continue
        if key.endswith("_step"):
            terms.setdefault(key[: -len("_step")], {})["step"] = points
        elif key.endswith("_epoch"):
            terms.setdefault(key[: -len("_epoch")], {})["epoch"] = points
        else:
            terms.setdefault(key, {})["epoch"] = points
    return dict(sorted(terms.items(), key=lambda kv: (kv[0] != "train/loss", kv[0])))


def plot_loss_curves(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """One panel per logged loss term (train and validation): per-step values (thin), their
    moving average, and per-epoch means (dots). None when nothing has been logged yet."""
    terms = _loss_terms(read_metrics(metrics_csv))
    if not terms:
        return None
    n = len(terms)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 2.8 * rows)
    for i, (name, parts) in enumerate(terms.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if "step" in parts:
            steps, values = (np.asarray(v) for v in zip(*parts["step"], strict=True))
            ax.plot(steps, values, color="#9ecae1", linewidth=0.8, label="per step")
            if values.size >= 5:
                window = max(2, values.size // 10)
                ax.plot(steps, _smooth(values, window), color="#08519c", linewidth=1.5,
                        label="moving average")
        if "epoch" in parts:
            steps, values = (np.asarray(v) for v in zip(*parts["epoch"], strict=True))
            ax.plot(steps, values, "o-", color="#d94801", markersize=3.5, linewidth=1.0,
                    label="epoch mean")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_probe_curve(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """Online linear-probe accuracy: training batches (per step, smoothed) and the validation
    split (per epoch). None when the run has no online probe."""
    series = read_metrics(metrics_csv)
    keys = [k for k in series if "online_probe_acc" in k]
    if not keys:
        return None
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if "train/online_probe_acc_step" in series:
        steps, values = (np.asarray(v) for v in zip(*series["train/online_probe_acc_step"],
                                                     strict=True))
        ax.plot(steps, values, color="#c7e9c0", linewidth=0.8, label="train batch")
        if values.size >= 5:
            ax.plot(steps, _smooth(values, max(2, values.size // 10)), color="#238b45",
                    linewidth=1.5, label="train (moving average)")
    for key, style, label in (
        ("train/online_probe_acc_epoch", "s-", "train epoch mean"),
        ("val/online_probe_acc", "o-", "validation (test split)"),
    ):
        if key in series:
            steps, values = (np.asarray(v) for v in zip(*series[key], strict=True))
            ax.plot(steps, values, style, markersize=4, linewidth=1.2, label=label)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_title("online linear probe (detached features)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(path))


def embed_2d(features: np.ndarray, kind: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates of ``features`` (N, D), standardised per dimension: t-SNE (perplexity
    min(30, (N-1)/3), after PCA to 50 dimensions when D > 50), UMAP (umap-learn, n_neighbors
    min(15, N-1), min_dist 0.1, after the same PCA) or PCA (the two leading components)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    scale = x.std(axis=0, keepdims=True)
    x = x / np.where(scale > 1e-12, scale, 1.0)
    n, d = x.shape
    if n < 3:
        raise ValueError(f"an embedding plot needs at least 3 points, got {n}")
    if kind == "pca" or d < 2:
        if d < 2:
            return np.concatenate([x[:, :1], np.zeros((n, 1))], axis=1)
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if kind not in ("tsne", "umap"):
        raise ValueError(f"unknown embedding {kind!r}; use tsne, umap or pca")
    if d > 50:
        x = PCA(n_components=min(50, n), random_state=seed).fit_transform(x)
    if kind == "umap":
        return umap_2d(x, seed)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP (McInnes et al., 2018) to 2-D with umap-learn; a clear error when it is missing."""
    try:
        import umap
    except ImportError:
        raise ImportError(
            "The UMAP embedding plot needs the umap-learn package, which is not installed. "
            "Install it with `pip install umap-learn` (or `pip install selfsup[umap]`), or choose "
            "--embedding-plot tsne or pca."
        ) from None
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), min_dist=0.1,
                        random_state=seed)
    return np.asarray(reducer.fit_transform(x))


def plot_embedding(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    path: str | Path,
    kind: str = "tsne",
    title: str = "",
    class_names: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Scatter plot of a 2-D embedding (t-SNE, UMAP or PCA) of ``features`` colored by ``labels``
    (label -1 = unlabeled, drawn grey)."""
    feats = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else (
        np.asarray(features, dtype=np.float64))
    labs = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(
        labels)
    xy = embed_2d(feats, kind, seed)
    fig = _figure(6.0, 5.4)
    ax = fig.add_subplot(1, 1, 1)
    classes = sorted(int(c) for c in np.unique(labs) if c >= 0)
    cmap = _class_colors(len(classes))
    unlabeled = labs < 0
    if unlabeled.any():
        ax.scatter(xy[unlabeled, 0], xy[unlabeled, 1], s=5, c="#bdbdbd", label="unlabeled")
    for i, c in enumerate(classes):
        mask = labs == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap[i], label=name, alpha=0.85)
    if 0 < len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{kind.upper()} of {len(labs)} test representations", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path), tight=True)


def _class_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]


@torch.no_grad()
def save_latent_traversals(
    method: Any,
    images: torch.Tensor,
    path: str | Path,
    max_dims: int = 10,
    steps: int = 9,
    span: float = 2.5,
) -> Path:
    """Latent traversals of a model with ``latent`` and ``decode`` (the VAE family).

    The anchor is the latent mean mu of the first image of ``images`` (uint8). Row d decodes
    mu with coordinate d replaced by ``steps`` values evenly spaced over m_d +- span * s_d, where
    m_d and s_d are the mean and standard deviation of mu_d over all of ``images``; all other
    coordinates stay fixed. The ``max_dims`` coordinates with the largest s_d are shown (in index
    order); the left column is the input image.
    """
    was_training = method.training
    method.eval()
    try:
        x = method.preprocess(images.to(method.device))
        mu = method.latent(x).float()
        spread = mu.std(dim=0) if mu.shape[0] > 1 else torch.ones_like(mu[0])
        center = mu.mean(dim=0)
        dims = torch.argsort(spread, descending=True)[:max_dims].sort().values
        offsets = torch.linspace(-span, span, steps, device=mu.device)
        rows = []
        for d in dims.tolist():
            z = mu[:1].repeat(steps, 1)
            z[:, d] = center[d] + offsets * spread[d]
            rows.append(method.decode(z).float().clamp(0, 1).cpu())
        original = method.augment.to_float(images[:1].to(method.device)).float().cpu()
    finally:
        method.train(was_training)
    c, h, w = rows[0].shape[1:]
    grid = torch.ones(len(rows), steps + 1, c, h, w)
    grid[:, 0] = original[0].clamp(0, 1)
    for r, decoded in enumerate(rows):
        grid[r, 1:] = decoded
    picture = make_grid(grid.flatten(0, 1), nrow=steps + 1, padding=2, pad_value=1.0)
    array = picture.permute(1, 2, 0).numpy()
    if array.shape[2] == 1 or c == 1:
        array = array[:, :, 0]
    cell = max(0.45, min(1.0, 28 / max(h, 1) * 0.6))
    fig = _figure(cell * (steps + 1) + 1.0, cell * len(rows) + 0.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    pitch = h + 2
    ax.set_yticks([2 + pitch * r + h / 2 for r in range(len(rows))])
    ax.set_yticklabels([f"z{d}" for d in dims.tolist()], fontsize=7)
    ax.set_xticks([2 + (w + 2) * i + w / 2 for i in range(steps + 1)])
    ax.set_xticklabels(["input"] + [f"{o:+.1f}s" for o in offsets.tolist()], fontsize=6,
                       rotation=90)
    ax.set_title("latent traversals (one coordinate varied, others at the input's mean)",
                 fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def factor_scores_table(scores: dict[str, Any] | str | Path) -> dict[str, dict[str, float]]:
    """Normalise a factor-evaluation result to ``{split: {factor: score}}``.

    Accepts that mapping itself, a path to a JSON file holding it, the result of
    ``selfsup eval factors`` (``RUN_DIR/eval/factors.json``: a ``results`` list with one row per
    (representation, factor) holding ``factor``, ``representation``, ``metric`` and a score per
    split), or a dict with the mapping under ``"scores"``; a score may be a number or a dict
    holding one of ``score``, ``accuracy``, ``r2`` or ``value``.
    """
    if isinstance(scores, (str, Path)):
        scores = json.loads(Path(scores).read_text())
    if not isinstance(scores, dict):
        raise ValueError("factor scores must be a mapping {split: {factor: score}}")
    if isinstance(scores.get("results"), list):
        return _factor_rows_table(scores)
    for key in ("scores", "results"):
        if isinstance(scores.get(key), dict):
            scores = scores[key]
            break
    table: dict[str, dict[str, float]] = {}
    for split, factors in scores.items():
        if not isinstance(factors, dict):
            continue
        row: dict[str, float] = {}
        for factor, value in factors.items():
            number = _score_value(value)
            if number is not None:
                row[str(factor)] = number
        if row:
            table[str(split)] = row
    if not table:
        raise ValueError("no per-factor scores found (expected {split: {factor: score}})")
    return table


def _factor_rows_table(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{split: {factor: score}} from the row list of ``selfsup eval factors``."""
    rows = [r for r in result["results"] if isinstance(r, dict) and "skipped" not in r]
    reps = {r.get("representation") for r in rows}
    splits = [s for s in (result.get("splits") or {}) if any(s in r for r in rows)]
    table: dict[str, dict[str, float]] = {}
    for split in splits:
        for row in rows:
            number = _score_value(row.get(split))
            if number is None:
                continue
            label = f"{row.get('factor')} ({row.get('metric', 'score')})"
            if len(reps) > 1:
                label += f" [{row.get('representation')}]"
            table.setdefault(split, {})[label] = number
    if not table:
        raise ValueError("no per-factor scores found in the factor evaluation's results")
    return table


def _score_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in ("score", "accuracy", "r2", "value"):
            if isinstance(value.get(key), (int, float)) and not isinstance(value.get(key), bool):
                return float(value[key])
    return None


def plot_factor_scores(
    scores: dict[str, Any] | str | Path, path: str | Path, title: str = ""
) -> Path:
    """Grouped bar chart: for each ground-truth factor, how well it is predicted from the
    representation, one bar per split (e.g. train/test or a held-out combination split)."""
    table = factor_scores_table(scores)
    splits = list(table)
    factors: list[str] = []
    for row in table.values():
        factors.extend(f for f in row if f not in factors)
    width = 0.8 / len(splits)
    fig = _figure(max(4.5, 1.1 * len(factors) * max(1, len(splits) / 2) + 1.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(factors))
    colors = _class_colors(len(splits))
    for i, split in enumerate(splits):
        values = [table[split].get(f, np.nan) for f in factors]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=split,
                      color=colors[i])
        for bar, value in zip(bars, values, strict=True):
            if np.isfinite(value):
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(factors, rotation=20, fontsize=8)
    ax.set_ylabel("score")
    top = max((v for row in table.values() for v in row.values()), default=1.0)
    ax.set_ylim(min(0.0, min(v for row in table.values() for v in row.values())),
                max(1.0, top * 1.1))
    ax.set_title(title or "factor prediction from the representation", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def png_array(path: str | Path) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array of a PNG file (for TensorBoard's ``add_image``)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
