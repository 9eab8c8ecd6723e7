"""``selfsup compare``: train several methods on one dataset with a shared budget, evaluate all of
them with the same probes, and write one report.

A comparison preset (``configs/compare/NAME.yaml``, or any YAML file) holds::

    dataset: mnist
    methods: [vae, simvae, ...]      # or "all": every registered method
    epochs: 1                        # the shared budget: epochs, optional max_steps, batch size
    max_steps: -1
    batch_size: 128
    use_presets: true                # start from configs/METHOD/DATASET.yaml where it exists
    evals: [linear, knn]             # probes run on every method
    generative_evals: [gmm]          # extra probes for methods with a decoder
    eval_train_max: 0                # fit probes on at most this many train samples (0 = all)
    probe_options: {gmm: {n_init: 2}}
    set: [trainer.num_threads=1]     # --set overrides applied to every method
    method_set: {vae: [model.latent_dim=16]}   # per-method overrides

Command-line options override the preset's dataset, methods, epochs, steps and data folder. Each
method trains into ``OUT/<method>/`` (a normal run folder), evaluations are saved in
``OUT/<method>/eval/<probe>.json``, and ``OUT/report.html`` / ``OUT/report.md`` compare them.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfsup.config import PRESET_DIR, load_yaml
from selfsup.errors import ConfigError, NonFiniteLossError, RunError
from selfsup.rundir import RunFolder

COMPARE_DIR = PRESET_DIR / "compare"
KEYS = {
    "dataset": str,
    "methods": (list, str),
    "epochs": int,
    "max_steps": int,
    "batch_size": int,
    "use_presets": bool,
    "evals": list,
    "generative_evals": list,
    "eval_train_max": int,
    "probe_options": dict,
    "set": list,
    "method_set": dict,
    "seed": int,
    "title": str,
}


def preset_names() -> list[str]:
    """The packaged comparison presets (``configs/compare/*.yaml``)."""
    return sorted(p.stem for p in COMPARE_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A comparison preset by name (``mnist-all``) or YAML path, with its keys type-checked."""
    path = Path(name_or_path)
    if not path.suffix:
        path = COMPARE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"No comparison preset {name_or_path!r}. Use one of {', '.join(preset_names())} or "
            "the path of a YAML file (see `selfsup compare --help`)."
        )
    preset = load_yaml(path)
    for key, value in preset.items():
        if key not in KEYS:
            raise ConfigError(
                f"Comparison preset {path}: unknown key {key!r}; valid keys are "
                f"{', '.join(KEYS)}."
            )
        if not isinstance(value, KEYS[key]) or (KEYS[key] is int and isinstance(value, bool)):
            raise ConfigError(f"Comparison preset {path}: {key} has the wrong type ({value!r}).")
    preset.setdefault("title", f"selfsup compare: {path.stem}")
    return preset


def _methods(spec: list[str] | str) -> list[str]:
    from selfsup.methods import method_names

    known = method_names()
    names = known if spec == "all" else (spec.split(",") if isinstance(spec, str) else spec)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(
            f"Unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(known)} or `all`."
        )
    return names


def _log(message: str) -> None:
    print(f"selfsup compare: {message}", file=sys.stderr, flush=True)


def compare(
    preset: str,
    out: str | Path | None = None,
    *,
    dataset: str | None = None,
    methods: str | list[str] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    existing: str = "error",
    formats: tuple[str, ...] = ("html", "md"),
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Train, evaluate and report every method of ``preset``; returns a summary dict.

    ``epochs``, ``max_steps`` and ``batch_size`` override the preset's shared budget.
    ``existing`` says what to do with a method folder that already holds a run: ``error``,
    ``overwrite`` (delete and retrain) or ``reuse`` (keep it, re-evaluate it).
    """
    from selfsup import pipelines
    from selfsup.report import eval_name, save_evaluation, write_report

    spec = load_preset(preset)
    dataset = dataset or spec.get("dataset", "digits")
    names = _methods(methods if methods is not None else spec.get("methods", "all"))
    epochs = epochs if epochs is not None else int(spec.get("epochs", 1))
    max_steps = max_steps if max_steps is not None else int(spec.get("max_steps", -1))
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}.")
    if existing not in ("error", "overwrite", "reuse"):
        raise ConfigError(f"existing must be error, overwrite or reuse, got {existing!r}.")
    out = Path(out) if out else Path("runs") / f"compare-{Path(preset).stem}-{dataset}"
    evals = list(spec.get("evals", ["linear", "knn"]))
    generative_evals = list(spec.get("generative_evals", ["gmm"]))
    for probe in evals + generative_evals:
        if probe not in pipelines.PROBES:
            raise ConfigError(
                f"Comparison preset: unknown evaluation {probe!r}; use "
                f"{', '.join(pipelines.PROBES)}."
            )
    probe_options = spec.get("probe_options", {}) or {}
    trainer: dict[str, Any] = {"epochs": epochs, "max_steps": max_steps, "progress_bar": False}
    if threads:
        trainer["num_threads"] = threads
    data: dict[str, Any] = {}
    if batch_size is not None or spec.get("batch_size"):
        data["batch_size"] = int(batch_size if batch_size is not None else spec["batch_size"])
    if data_dir:
        data["dir"] = data_dir
    configs = {}
    for name in names:  # resolve every config first: a bad key fails before any training
        sets = list(spec.get("set", [])) + list((spec.get("method_set", {}) or {}).get(name, []))
        if "seed" in spec:
            sets.append(f"seed={int(spec['seed'])}")
        configs[name] = pipelines.build_config(
            name,
            dataset,
            flags={"trainer": dict(trainer), "data": dict(data)},
            sets=sets,
            use_preset=bool(spec.get("use_presets", True)),
        )
    RunFolder(out).check_writable(  # before any training
        "compare writes every method's run and the reports there",
        "Choose a writable folder with --out, or fix its permissions.")
    runs: list[Path] = []
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, name in enumerate(names, 1):
        folder = RunFolder(out / name)
        run_dir = folder.path
        config = configs[name]
        if folder.is_failed_start():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to reuse
        if folder.is_run():
            if existing == "error":
                raise RunError(
                    f"{run_dir} already holds a run. Pass --overwrite to retrain it, --reuse to "
                    "keep it and only re-evaluate, or choose another --out."
                )
            if existing == "overwrite":
                shutil.rmtree(run_dir)
        started = time.perf_counter()
        if folder.is_run():
            error = folder.last_session_error()
            if error:
                log(f"[{i}/{len(names)}] {name}: FAILED in an earlier comparison, left out of "
                    f"the report (pass --overwrite to retrain it). {error}")
                failed[name] = error
                continue
            log(f"[{i}/{len(names)}] {name}: reusing {run_dir}")
            method = pipelines.load_run(run_dir)
        else:
            log(f"[{i}/{len(names)}] {name}: training on {dataset} ({epochs} epoch(s))")
            try:
                method, _ = pipelines.train(config, run_dir)
            except NonFiniteLossError as exc:
                # One diverging method must not cost the others: record it and go on.
                log(f"[{i}/{len(names)}] {name}: FAILED, left out of the report. {exc}")
                failed[name] = str(exc)
                continue
        features = pipelines.run_features(
            method, data_dir, method.device, train_max=int(spec.get("eval_train_max", 0))
        )
        scores: dict[str, Any] = {}
        probes = evals + (generative_evals if method.generative else [])
        for probe in probes:
            options = dict(probe_options.get(probe, {}) or {})
            result = pipelines.evaluate(
                method, probe, data_dir, features=features, probe_options=dict(options)
            )
            save_evaluation(run_dir, eval_name(probe, options), result)
            scores[probe] = result.get("accuracy", result.get("cluster_accuracy"))
        log(
            f"[{i}/{len(names)}] {name}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if v is not None)
            + f" ({time.perf_counter() - started:.1f} s)"
        )
        runs.append(run_dir)
        results[name] = {"run_dir": str(run_dir), **scores}
    if not runs:
        raise RunError(
            "Every method of the comparison failed (" + "; ".join(
                f"{k}: {v}" for k, v in failed.items()) + "). Lower the learning rates or use "
            "32-bit precision, then rerun with --overwrite."
        )
    reports = {}
    for fmt in formats:
        path = out / f"report.{fmt}"
        reports[fmt] = str(write_report(runs, path, fmt, title=str(spec["title"])))
    return {"out": str(out), "dataset": dataset, "epochs": epochs, "max_steps": max_steps,
            "reports": reports, "methods": results, "failed": failed}
