"""``selfsup report``: one page comparing runs (self-contained HTML, or a Markdown table).

A run folder tells everything the report shows: ``config.yaml`` (method, dataset, budget),
``training.json`` (wall time and steps of each training session), ``eval/*.json`` (every
evaluation saved by ``selfsup eval`` or ``selfsup compare``) and the figures in ``images/``, all
read through :class:`selfsup.rundir.RunFolder`. Several folders (e.g. ``runs/*``) skip those
that hold no trained run, with a note. The HTML page
embeds the figures as base64 ``data:`` URIs and its CSS inline, so it opens anywhere without
network access; every figure links to its file in the run folder.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError, RunError

# The run folder's files are read and written by selfsup.rundir; these names stay importable here.
from selfsup.rundir import (  # noqa: F401
    EVAL_DIR,
    TRAINING_FILE,
    RunFolder,
    eval_name,
    record_training,
    save_evaluation,
)

FORMATS = ("html", "md")
FIGURE_ORDER = (
    "loss_curves",
    "online_probe",
    "embedding",
    "reconstructions",
    "samples",
    "latent_traversals",
    "factor_scores",
)
FIGURE_CLASS = {"loss_curves": "wide", "reconstructions": "grid", "samples": "grid"}
#: Headline keys shown in the comparison table (others stay in the per-run details).
HEADLINE_KEYS = ("accuracy", "cluster_accuracy", "nmi", "ari")


@dataclass
class RunSummary:
    """What the report shows about one run folder."""

    run_dir: Path
    method: str
    dataset: str
    epochs: int
    max_steps: int
    batch_size: int
    steps_done: int | None = None
    epochs_done: int | None = None
    seconds: float | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def budget(self) -> str:
        capped = self.max_steps > 0 and self.steps_done == self.max_steps
        if capped:  # stopped by trainer.max_steps, possibly inside the first epoch
            return f"{self.steps_done} steps (max_steps), batch {self.batch_size}"
        parts = [f"{self.epochs_done if self.epochs_done is not None else self.epochs} ep"]
        if self.steps_done is not None:
            parts.append(f"{self.steps_done} steps")
        elif self.max_steps > 0:
            parts.append(f"<= {self.max_steps} steps")
        parts.append(f"batch {self.batch_size}")
        return ", ".join(parts)

    @property
    def wall_time(self) -> str:
        if self.seconds is None:
            return "-"
        return f"{self.seconds:.1f} s" if self.seconds < 600 else f"{self.seconds / 60:.1f} min"


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Read a run folder; a folder without ``config.yaml`` is a RunError."""
    folder = RunFolder(run_dir)
    config = folder.read_config_dict()
    trainer = config.get("trainer", {}) or {}
    data = config.get("data", {}) or {}
    summary = RunSummary(
        run_dir=folder.path,
        method=str(config.get("method", "?")),
        dataset=str(data.get("name", "?")),
        epochs=int(trainer.get("epochs", 0) or 0),
        max_steps=int(trainer.get("max_steps", -1) or -1),
        batch_size=int(data.get("batch_size", 0) or 0),
    )
    training = folder.read_training()
    try:
        summary.seconds = float(training["seconds"])
        summary.steps_done = int(training["global_step"])
        summary.epochs_done = int(training["epochs"])
    except (KeyError, TypeError, ValueError):
        pass
    summary.evals = folder.read_evaluations()
    summary.figures = _figures(folder, summary.evals)
    return summary


def _figures(folder: RunFolder, evals: dict[str, dict[str, Any]]) -> dict[str, Path]:
    images = folder.image_dir
    for name, result in evals.items():  # factor evaluations get their bar chart here
        target = images / f"{name.replace('factors', 'factor_scores')}.png"
        if name.startswith("factors"):
            try:
                from selfsup.plots import plot_factor_scores

                plot_factor_scores(result, target, title=f"{name}: factor prediction")
            except (ValueError, OSError):
                pass
    found = {p.stem: p for p in sorted(images.glob("*.png"))} if images.is_dir() else {}
    ordered = {k: found.pop(k) for k in FIGURE_ORDER if k in found}
    ordered.update(found)
    return ordered


def reportable(run_dirs: list[str | Path], note: Any = None) -> list[Path]:
    """The folders among ``run_dirs`` that hold a trained run; each one skipped is named in a
    note (``note(message)``, default: stderr), e.g. an empty folder matched by ``runs/*``."""
    import sys

    kept = []
    for run_dir in run_dirs:
        folder = RunFolder(run_dir)
        if folder.is_run() and folder.has_checkpoint():
            kept.append(folder.path)
            continue
        why = (
            "is not a folder" if not folder.path.is_dir()
            else "holds no run (no config.yaml)" if not folder.is_run()
            else "holds a run that stopped before its first checkpoint"
        )
        message = f"selfsup report: note: skipping {folder.path}: it {why}."
        if note is None:
            print(message, file=sys.stderr)
        else:
            note(message)
    return kept


# ------------------------------------------------------------------------------------ metrics
def headline_metrics(name: str, result: dict[str, Any]) -> dict[str, float]:
    """The figures of one evaluation shown in the table: accuracy-type scores, NMI and ARI
    (columns ``<eval> <key>``); factor evaluations show, per split, the mean score of the
    factors of each metric separately (``factors test accuracy (mean)``, ``factors test r2
    (mean)``): an accuracy and an R^2 are never averaged together."""
    out: dict[str, float] = {}
    if name.startswith("factors"):
        try:
            from selfsup.plots import factor_scores_table

            for split, row in factor_scores_table(result).items():
                groups: dict[str, list[float]] = {}
                for label, value in row.items():
                    groups.setdefault(_factor_metric(label), []).append(value)
                for metric, values in groups.items():
                    column = f"{name} {split} {metric} (mean)".replace("  ", " ")
                    out[column] = sum(values) / len(values)
        except ValueError:
            pass
        return out
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name.startswith("fid") and key == "fid":  # eval/fid*.json: one column per file
            out[name] = float(value)
        elif key in HEADLINE_KEYS or key.startswith("accuracy_k"):
            if name == "knn" and key == "accuracy":
                continue  # the same number as accuracy_k<first k>
            out[f"{name} {key.replace('accuracy_', '').replace('accuracy', 'acc')}"] = float(value)
    return out


def _factor_metric(label: str) -> str:
    """``"shape (accuracy) [code]"`` -> ``"accuracy [code]"``, ``"shape"`` -> ``""``: the metric
    (and representation) of a factor score as :func:`selfsup.plots.factor_scores_table` labels
    it."""
    match = re.fullmatch(r".*\(([^()]*)\)( \[.*\])?", label)
    return "" if match is None else match.group(1) + (match.group(2) or "")


def _table(summaries: list[RunSummary]) -> tuple[list[str], list[list[Any]]]:
    columns: list[str] = []
    rows_metrics = []
    for s in summaries:
        metrics: dict[str, float] = {}
        for name, result in s.evals.items():
            metrics.update(headline_metrics(name, result))
        columns.extend(c for c in metrics if c not in columns)
        rows_metrics.append(metrics)
    columns.sort(key=_column_order)
    rows = [[m.get(c) for c in columns] for m in rows_metrics]
    return columns, rows


def _column_order(column: str) -> int:
    """Evaluations in a fixed order; a stable sort keeps each one's keys in their JSON order."""
    order = ("linear", "mlp", "knn", "gmm", "factors", "fid")
    for i, prefix in enumerate(order):
        if column.startswith(prefix):
            return i
    return len(order)


def _best(rows: list[list[Any]], j: int, column: str, datasets: list[str], i: int) -> bool:
    """Whether row ``i``'s value in column ``j`` is the best among the runs on the same dataset as
    run ``i`` (a column is one metric; scores on other datasets are not comparable). Best is the
    highest, except for FID columns, where it is the lowest."""
    value = rows[i][j]
    same = [r[j] for r, d in zip(rows, datasets, strict=True)
            if d == datasets[i] and r[j] is not None]
    best = min if column.startswith("fid") else max
    return value is not None and len(same) > 1 and value == best(same)


# ----------------------------------------------------------------------------------- markdown
def render_markdown(summaries: list[RunSummary], out: Path) -> str:
    """A Markdown table comparing the runs (in bold: the best value of each column among the runs
    on the same dataset) and figure links."""
    columns, rows = _table(summaries)
    datasets = [s.dataset for s in summaries]
    header = ["run", "method", "dataset", "budget", "train time", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (s, row) in enumerate(zip(summaries, rows, strict=True)):
        link = _relative(s.run_dir, out.parent)
        cells = [f"[{s.name}]({link})", s.method, s.dataset, s.budget, s.wall_time]
        for j, value in enumerate(row):
            text = "-" if value is None else f"{value:.4f}"
            cells.append(f"**{text}**" if _best(rows, j, columns[j], datasets, i) else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for s in summaries:
        if s.figures:
            figs = ", ".join(
                f"[{name}]({_relative(path, out.parent)})" for name, path in s.figures.items()
            )
            lines.append(f"- {s.name}: {figs}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- html
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2733;
background:#f7f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#5b6675;font-size:13px;margin-bottom:16px}
table{border-collapse:collapse;background:#fff;font-size:13px;box-shadow:0 1px 3px #0002}
th,td{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{background:#24364b;color:#fff;font-weight:600}
td.l,th.l{text-align:left}tr:hover td{background:#f0f5ff}td.best{font-weight:700;color:#0b5d1e;
background:#e6f5ea}
.run{background:#fff;border-radius:6px;padding:12px 16px;margin:18px 0;box-shadow:0 1px 3px #0002}
.figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;flex:0 0 400px}figure.wide{flex-basis:820px}figure.grid{flex-basis:240px}
figure img{width:100%;border:1px solid #e3e6ea;background:#fff}
figure.grid img{image-rendering:pixelated}
figcaption{font-size:12px;color:#5b6675}
details{font-size:12px;margin-top:8px}pre{background:#f3f4f6;padding:8px;overflow:auto}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_uri()


def render_html(summaries: list[RunSummary], out: Path, title: str = "selfsup report") -> str:
    """One self-contained HTML page: comparison table, then each run's figures (embedded)."""
    esc = html.escape
    columns, rows = _table(summaries)
    run_datasets = [s.dataset for s in summaries]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    datasets = sorted({s.dataset for s in summaries})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<div class='meta'>{len(summaries)} run(s) on {esc(', '.join(datasets))}; generated "
        f"{stamp}. Scores are on the test split (probes fit on train, hyper-parameters chosen on "
        "a validation split of train). Highlighted: the best value of each column among the "
        "runs on the same dataset.</div>",
        "<table><tr><th class='l'>run</th><th class='l'>method</th><th class='l'>dataset</th>"
        "<th class='l'>budget</th><th>train time</th>",
        *(f"<th>{esc(c)}</th>" for c in columns),
        "</tr>",
    ]
    for i, (s, row) in enumerate(zip(summaries, rows, strict=True)):
        cells = [
            f"<td class='l'><a href='#run{i}'>{esc(s.name)}</a></td>",
            f"<td class='l'>{esc(s.method)}</td><td class='l'>{esc(s.dataset)}</td>",
            f"<td class='l'>{esc(s.budget)}</td><td>{esc(s.wall_time)}</td>",
        ]
        for j, value in enumerate(row):
            cls = " class='best'" if _best(rows, j, columns[j], run_datasets, i) else ""
            cells.append(f"<td{cls}>{'-' if value is None else f'{value:.4f}'}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    for i, s in enumerate(summaries):
        folder = _relative(s.run_dir, out.parent)
        parts.append(
            f"<div class='run' id='run{i}'><h2>{esc(s.method)} on {esc(s.dataset)} "
            f"&mdash; <a href='{esc(folder)}'>{esc(s.name)}</a></h2>"
            f"<div class='meta'>{esc(s.budget)}; training wall time {esc(s.wall_time)}; folder "
            f"<code>{esc(str(s.run_dir))}</code></div><div class='figs'>"
        )
        if not s.figures:
            parts.append("<p class='meta'>No figures (trained with trainer.plots=false).</p>")
        for name, path in s.figures.items():
            link = esc(_relative(path, out.parent))
            kind = FIGURE_CLASS.get(name, "")
            parts.append(
                f"<figure class='{kind}'><a href='{link}'><img alt='{esc(name)} of {esc(s.name)}' "
                f"src='{_data_uri(path)}'></a><figcaption>{esc(name)}</figcaption></figure>"
            )
        parts.append("</div>")
        if s.evals:
            details = json.dumps(s.evals, indent=1, default=str)
            parts.append(
                f"<details><summary>evaluation details</summary><pre>{esc(details)}</pre></details>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    run_dirs: list[str | Path], out: str | Path, fmt: str = "html", title: str = "selfsup report"
) -> Path:
    """Summarize ``run_dirs`` into ``out`` (``fmt`` html or md); returns the path written."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown report format {fmt!r}; use html or md.")
    if not run_dirs:
        raise ConfigError("Name at least one run folder, e.g. `selfsup report runs/vae-mnist`.")
    kept = reportable(run_dirs) if len(run_dirs) > 1 else [Path(d) for d in run_dirs]
    if not kept:
        raise RunError(
            "None of the folders given holds a trained run (see the notes above). Pass folders "
            "written by `selfsup train --out` or `selfsup compare`."
        )
    summaries = [summarize_run(d) for d in kept]
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        text = render_html(summaries, out, title) if fmt == "html" else render_markdown(
            summaries, out
        )
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RunError(
            f"Cannot write the report to {out} ({exc.strerror or exc}). Choose another --out."
        ) from None
    return out
