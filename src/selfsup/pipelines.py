"""Pipelines: resolve a config, train or resume a run, load a finished run, evaluate it.

These are the library's entry points; ``cli.py`` only parses arguments and calls them. The run
folder's layout and files belong to :mod:`selfsup.rundir`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup.config import RunConfig, load_yaml, preset_path, resolve_config
from selfsup.data import dataset_spec, load_dataset
from selfsup.data.augment import resolve_normalization
from selfsup.data.base import AnyDataset, DataInfo, ImageDataset
from selfsup.engine import (
    TrainResult,
    check_output_dir,
    fit,
)
from selfsup.errors import ConfigError, RunError, TrainingStopped
from selfsup.methods import method_class
from selfsup.methods.base import Method
from selfsup.rundir import CONFIG_FILE, RunFolder, load_checkpoint

__all__ = ["CONFIG_FILE"]  # re-exported: older callers check `run_dir / pipelines.CONFIG_FILE`


# ----------------------------------------------------------------------------------- configs
def build_config(
    method: str,
    dataset: str | None = None,
    *,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    use_preset: bool = True,
) -> RunConfig:
    """Resolve a run config: defaults < method's dataset defaults < preset < file < flags/sets.

    ``flags`` holds section-qualified values (``{"data": {"dir": ...}}``) and free-form method or
    dataset options (``{"encode_method": "softmax"}``) resolved to the section that defines them.
    """
    from selfsup.config import flags_to_overrides, parse_overrides

    cls = method_class(method)
    file_layer = load_yaml(config_file) if config_file else {}
    flags = dict(flags or {})
    sectioned = {k: flags.pop(k) for k in list(flags) if isinstance(flags[k], dict)}
    free = flags_to_overrides(flags, cls.config_class)
    for section, values in free.items():
        sectioned.setdefault(section, {}).update(values)
    set_layer = parse_overrides(sets or [])
    name = (
        dataset
        or set_layer.get("data", {}).get("name")
        or file_layer.get("data", {}).get("name")
        or "digits"
    )
    sectioned.setdefault("data", {})["name"] = name
    image_size = int(
        set_layer.get("data", {}).get("image_size")
        or sectioned["data"].get("image_size")
        or file_layer.get("data", {}).get("image_size")
        or 64
    )
    method_defaults = cls.default_config(DataInfo.from_spec(dataset_spec(name), image_size))
    layers: list[tuple[str, dict[str, Any]]] = [(f"the defaults of {method} for {name}",
                                                  method_defaults)]
    dataset_augment = dataset_spec(name).extra.get("augment")
    if dataset_augment and "augment" in method_defaults:
        # A method that augments by design gets the dataset's own (the paper's) augmentations.
        layers.append((f"the augmentations of dataset {name}", {"augment": dict(dataset_augment)}))
    preset = preset_path(method, name)
    if use_preset and preset.is_file():
        layers.append((f"preset {preset}", load_yaml(preset)))
    if config_file:
        layers.append((f"config file {config_file}", file_layer))
    layers.append(("the command-line options", sectioned))
    if set_layer:
        layers.append(("the --set overrides", set_layer))
    return resolve_config(method, cls.config_class, layers)


#: Config keys a resume may change, and why that is safe: where the data is, how long to train,
#: and how the session is run, shown and checkpointed. Any other key would change what the run
#: computes (its model, data, optimisation or randomness), so a resume refuses it.
RESUME_KEYS: dict[str, str] = {
    "trainer.epochs": "extends (or shortens) the run",
    "trainer.max_steps": "extends (or shortens) the run",
    "data.dir": "the same dataset, found in another folder",
    "data.download": "fetch missing dataset files",
    "data.num_workers": "loader processes for streamed datasets",
    "data.on_device": "where the in-memory images are kept",
    "trainer.accelerator": "continue on another kind of device",
    "trainer.num_threads": "CPU threads",
    "trainer.progress_bar": "display only",
    "trainer.log_every": "logging frequency",
    "trainer.plots": "figures",
    "trainer.plot_every": "figures",
    "trainer.embedding_plot": "figures",
    "trainer.checkpoint_every": "checkpoint frequency",
    "trainer.keep_checkpoints": "checkpoints kept",
    "trainer.val_every": "validation frequency",
    "trainer.check_finite": "the non-finite-loss guard",
}


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def resume_changes(
    config: RunConfig, sets: list[str], given_as: dict[str, str] | None = None
) -> tuple[RunConfig, dict[str, dict[str, Any]]]:
    """Apply ``sets`` (``key=value``) to a saved run config for a resume.

    Returns the new config and ``{key: {"from": old, "to": new}}`` for the values that changed.
    Keys outside :data:`RESUME_KEYS` are refused (ConfigError naming each, and how it was given).
    """
    from selfsup.config import parse_overrides

    layer = parse_overrides(sets)
    flat = _flatten(layer)
    refused = [k for k in flat if k not in RESUME_KEYS]
    if refused:
        names = ", ".join(
            f"{k} ({given_as[k]})" if given_as and k in given_as else k for k in refused
        )
        raise ConfigError(
            f"--resume continues a run with its saved configuration, so {names} cannot be "
            "changed: it would change what the run computes and the resumed run would no longer "
            "be the same run. Start a new run with the new value instead (`selfsup train METHOD "
            "... --out NEW_DIR`). A resume may change only: "
            + ", ".join(sorted(RESUME_KEYS)) + "."
        )
    new = resolve_config(
        config.method,
        type(config.model),
        [("the run's config.yaml", config.to_dict()), ("the options given with --resume", layer)],
    )
    old_flat, new_flat = _flatten(config.to_dict()), _flatten(new.to_dict())
    changes = {
        k: {"from": old_flat.get(k), "to": new_flat.get(k)}
        for k in flat
        if old_flat.get(k) != new_flat.get(k)
    }
    return new, changes


# ------------------------------------------------------------------------------------ datasets
def dataset_options(config: RunConfig) -> dict[str, Any]:
    """The data-section values that the dataset itself takes as options (e.g. image_size)."""
    allowed = dataset_spec(config.data.name).extra.get("options") or {}
    return {k: getattr(config.data, k) for k in allowed if hasattr(config.data, k)}


def load_split(config: RunConfig, split: str, data_dir: str | Path | None = None) -> AnyDataset:
    return load_dataset(
        config.data.name,
        data_dir or config.data.dir,
        split,
        options=dataset_options(config),
        download=config.data.download,
    )


def train_split_name(config: RunConfig) -> str:
    return config.data.train_split or dataset_spec(config.data.name).train_split


# ---------------------------------------------------------------------------------------- runs
def is_launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the command)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.method}-{config.data.name}-{stamp}"


def train(config: RunConfig, run_dir: str | Path | None = None) -> tuple[Method, TrainResult]:
    """Train a new run into ``run_dir``.

    The folder must be new, empty, or left by a run that stopped before its first checkpoint
    (reused). A start that fails before the first checkpoint leaves nothing behind: the files it
    wrote are removed again (and the folder, when this call created it).
    """
    folder = RunFolder(run_dir or default_run_dir(config))
    worker = is_launched_worker()
    created = not folder.path.exists()
    if not worker:
        note = folder.prepare_new()
        if note:
            print(f"selfsup: note: {note}", file=sys.stderr)
    try:
        check_output_dir(folder.path, needed_bytes=10 * 2**20)  # before loading data or training
        torch.manual_seed(config.seed)
        train_set = load_split(config, train_split_name(config))
        test_set = _optional_test_split(config)
        resolve_normalization(config.augment, train_set)  # normalize_stats=train: saved in config

        method = method_class(config.method)(config, DataInfo.of(train_set))

        def save_config() -> None:  # after the method resolved its "auto" choices
            if not worker:
                folder.save_config(config)

        result = _session(folder, method, train_set, test_set, False, save_config)
    except BaseException:
        if not worker and not folder.has_checkpoint():
            folder.remove_run_files(remove_folder=created)
        raise
    return method, result


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    sets: list[str] | None = None,
    *,
    given_as: dict[str, str] | None = None,
    progress_bar: bool | None = None,
) -> tuple[Method, TrainResult]:
    """Continue a run from ``checkpoints/last.ckpt``.

    ``epochs`` and ``sets`` (``key=value``) may change the keys of :data:`RESUME_KEYS` (e.g.
    ``trainer.epochs`` or ``trainer.max_steps`` to extend the run, ``data.dir`` when the data
    moved); the new values are saved in ``config.yaml`` and each change is recorded in
    ``training.json`` (``config_history``). Other keys are refused. ``progress_bar`` only affects
    this session's display.
    """
    folder = RunFolder(run_dir)
    config = folder.load_config()
    if not folder.last_checkpoint.is_file():
        periodic = folder.periodic_checkpoints()
        if periodic:
            raise RunError(
                f"{folder.last_checkpoint} is missing, but {periodic[-1].name} is there: copy it "
                f"to {folder.last_checkpoint} to resume from that epoch."
            )
        raise RunError(
            f"{folder.path} holds no checkpoint: that run stopped before its first one, so there "
            f"is nothing to resume. Start it again with `selfsup train {config.method} --dataset "
            f"{config.data.name} ... --out {folder.path}` (a folder like this one is reused)."
        )
    worker = is_launched_worker()
    if not worker:
        folder.check_writable(
            "resuming a run writes its checkpoints, logs and figures into its folder",
            f"Nothing was changed. Make the folder writable (e.g. `chmod -R u+w {folder.path}`) "
            f"or copy it and resume the copy (`cp -r {folder.path} COPY && selfsup train "
            "--resume COPY`).",
        )
    items = list(sets or []) + ([f"trainer.epochs={epochs}"] if epochs is not None else [])
    config, changes = resume_changes(config, items, given_as)
    if progress_bar is not None:
        config.trainer.progress_bar = progress_bar
    train_set = load_split(config, train_split_name(config))
    test_set = _optional_test_split(config)
    method = method_class(config.method)(config, DataInfo.of(train_set))

    def save_changes() -> None:
        if changes and not worker:
            saved = folder.load_config()  # the saved display settings stay as they were
            saved, _ = resume_changes(saved, items)
            folder.save_config(saved)
            folder.record_config_change(changes)

    result = _session(folder, method, train_set, test_set, True, save_changes)
    return method, result


def _session(
    folder: RunFolder,
    method: Method,
    train_set: AnyDataset,
    test_set: AnyDataset | None,
    resume: bool,
    before_training: Any,
) -> TrainResult:
    """One training session (``fit`` records it in ``training.json``); a stop before the first
    checkpoint is a :class:`TrainingStopped` (the caller removes the folder)."""
    result = fit(method, train_set, test_set, folder.path, resume=resume,
                 before_training=before_training)
    if result.aborted and not folder.has_checkpoint():
        raise TrainingStopped(
            "Training was stopped (Ctrl-C) before its first checkpoint, so there is nothing to "
            f"resume; the run folder {folder.path} was removed. Start the run again to train it."
        )
    return result


def _optional_test_split(config: RunConfig) -> AnyDataset | None:
    spec = dataset_spec(config.data.name)
    if spec.test_split not in spec.splits or spec.num_classes <= 0:
        return None
    return load_split(config, spec.test_split)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The validated config of a run folder."""
    return RunFolder(run_dir).load_config()


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> Method:
    """The trained method of a run folder, in eval mode on ``device``.

    The checkpoint is read without unpickling arbitrary objects and mapped to the CPU first, so a
    run trained on a GPU loads anywhere (:func:`selfsup.rundir.load_checkpoint`).
    """
    folder = RunFolder(run_dir)
    config = folder.load_config()
    path = Path(checkpoint) if checkpoint else folder.last_checkpoint
    ckpt = load_checkpoint(path)
    meta = ckpt.get("selfsup", {})
    if meta.get("method") not in (None, config.method):
        raise RunError(
            f"Checkpoint {path} was written by method {meta.get('method')!r}, but the run folder "
            f"{folder.path} is a {config.method!r} run. Use the checkpoint that belongs to this "
            "run."
        )
    info_dict = meta.get("data_info")
    if info_dict:
        info = DataInfo.from_dict(info_dict)
    else:
        info = DataInfo.from_spec(dataset_spec(config.data.name), config.data.image_size)
    method = method_class(config.method)(config, info)
    try:
        method.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise RunError(
            f"Checkpoint {path} does not fit the {config.method} model described by "
            f"{folder.config_file} ({str(exc).splitlines()[0]}). The checkpoint belongs to "
            "another run or configuration."
        ) from None
    return method.to(device).eval()


# ---------------------------------------------------------------------------------- evaluation
PROBES = ("linear", "mlp", "knn", "gmm")


@dataclass
class Features:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def labeled_splits(
    config: RunConfig, data_dir: str | Path | None = None
) -> tuple[AnyDataset, AnyDataset]:
    """The (train, test) splits a probe uses; ConfigError for a dataset without labels."""
    spec = dataset_spec(config.data.name)
    if spec.num_classes <= 0:
        raise ConfigError(
            f"Dataset {spec.name} has no labels, so probes cannot be trained on it. Evaluate on a "
            "labeled dataset."
        )
    return (load_split(config, spec.train_split, data_dir),
            load_split(config, spec.test_split, data_dir))


def run_features(
    method: Method,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    train_max: int = 0,
) -> Features:
    """Frozen representations of the train and test splits (labeled samples only).

    ``train_max`` > 0 keeps at most that many training samples (a subset seeded by the run's seed).
    """
    from selfsup.evaluate.features import frozen_features

    train_set, test_set = labeled_splits(method.config, data_dir)
    if train_max > 0 and isinstance(train_set, ImageDataset) and len(train_set) > train_max:
        gen = torch.Generator().manual_seed(method.config.seed)
        idx = torch.randperm(len(train_set), generator=gen)[:train_max].sort().values
        train_set = train_set.subset(idx)
    train_x, train_y = frozen_features(method, train_set, batch_size, device)
    test_x, test_y = frozen_features(method, test_set, batch_size, device)
    return Features(train_x, train_y, test_x, test_y)


def evaluate(
    method: Method,
    probe: str,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    features: Features | None = None,
    probe_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Frozen-encoder probe: fit on train (chosen on a val split of train), scored on test.

    ``probe_options`` are keyword arguments of the probe function (e.g. ``{"epochs": 20}`` for the
    MLP probe, ``{"k": [5, 20]}`` for kNN); for ``linear``, ``{"protocol": "sgd", "epochs": 50}``
    runs the papers' fixed-epoch SGD protocol (:func:`linear_protocol_probe`) instead of L-BFGS.
    """
    from selfsup.evaluate import gmm_clustering, knn_probe, linear_probe, mlp_probe
    from selfsup.evaluate.linear_protocol import AUGMENTED_PROTOCOL, linear_protocol_probe

    if probe not in PROBES:
        raise ConfigError(f"Unknown probe {probe!r}; choose one of {', '.join(PROBES)}.")
    options = dict(probe_options or {})
    if probe == "linear" and options.get("protocol") == AUGMENTED_PROTOCOL:
        return evaluate_augmented_linear(method, data_dir, device, seed, options)
    f = features or run_features(method, data_dir, device)
    started = time.perf_counter()
    data = (f.train_x, f.train_y, f.test_x, f.test_y)
    try:
        if probe == "linear" and options.get("protocol", "lbfgs") != "lbfgs":
            optimizer = options.pop("protocol")
            result = linear_protocol_probe(
                *data, optimizer=optimizer, seed=seed, device=device, **options
            )
        elif probe == "linear":
            options.pop("protocol", None)
            result = linear_probe(*data, seed=seed, device=device, **options)
        elif probe == "mlp":
            result = mlp_probe(*data, seed=seed, device=device, **options)
        elif probe == "knn":
            result = knn_probe(*data, device=device, **options)
        else:
            result = gmm_clustering(f.test_x, f.test_y, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(
            f"Option not accepted by the {probe} probe ({exc}). See `selfsup eval --help`."
        ) from None
    result = dict(result)
    result.update(
        method=method.config.method,
        dataset=method.config.data.name,
        feature_dim=int(f.train_x.shape[1]),
        seconds=round(time.perf_counter() - started, 3),
    )
    return result


def evaluate_augmented_linear(
    method: Method,
    data_dir: str | Path | None,
    device: str | torch.device,
    seed: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Linear protocol ``sgd-augmented`` (:func:`augmented_linear_protocol`): the probe is trained
    on augmented training images through the frozen encoder, so no features are cached."""
    from selfsup.evaluate.linear_protocol import augmented_linear_protocol

    config = method.config
    options = {k: v for k, v in options.items() if k != "protocol"}
    train_set, test_set = labeled_splits(config, data_dir)
    started = time.perf_counter()
    try:
        result = augmented_linear_protocol(
            method.to(device), train_set, test_set,
            num_classes=dataset_spec(config.data.name).num_classes, seed=seed,
            device=device, **options,
        )
    except TypeError as exc:
        raise ConfigError(
            f"Option not accepted by the linear sgd-augmented protocol ({exc}). See "
            "`selfsup eval --help`."
        ) from None
    result.update(
        method=config.method,
        dataset=config.data.name,
        seconds=round(time.perf_counter() - started, 3),
    )
    return result


# ------------------------------------------------------------------------ generation and FID
GENERATE_MODES = ("random", "limiting")


def generate_images(
    method: Method,
    n: int,
    mode: str = "random",
    steps: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
) -> torch.Tensor:
    """n images in [0, 1] (on the CPU) from a generative run.

    ``random``: the decoder's means for codes drawn from the prior (``method.sample``);
    ``limiting``: the limiting distribution of the encoder-decoder Markov chain
    (``method.sample_limiting``: ``steps`` transitions from noise, chains run in parallel).
    """
    if mode not in GENERATE_MODES:
        raise ConfigError(f"Unknown generation mode {mode!r}; use random or limiting.")
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    if mode == "limiting" and not hasattr(method, "sample_limiting"):
        raise ConfigError(
            f"--mode limiting needs a method with an encoder-decoder Markov chain sampler "
            f"(hvae); {method.name} supports --mode random."
        )
    if n < 1:
        raise ConfigError(f"The number of images must be >= 1, got {n}.")
    torch.manual_seed(seed)
    was_training = method.training
    method.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                if mode == "random":
                    images = method.sample(k)
                else:
                    images = method.sample_limiting(k, steps)  # type: ignore[attr-defined]
                out.append(images.float().clamp(0, 1).cpu())
    finally:
        method.train(was_training)
    return torch.cat(out)


def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to 8 bits (what a PNG stores), still float in [0, 1]."""
    return (images.float().clamp(0, 1) * 255).round() / 255


def save_image_folder(images: torch.Tensor, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/samples/NNNNNN.png`` (8-bit) and ``out_dir/grid.png`` (first 64)."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    out_dir = Path(out_dir)
    folder = out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (quantize_images(images) * 255).to(torch.uint8).cpu().numpy()
    for i, img in enumerate(pixels):
        arr = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{i:06d}.png")
    grid = out_dir / "grid.png"
    save_image(quantize_images(images[:64]), grid, nrow=8, padding=2, pad_value=1.0)
    return {"samples": str(folder), "grid": str(grid), "n": int(images.shape[0])}


def reference_images(method: Method, n: int, data_dir: str | Path | None = None) -> torch.Tensor:
    """The first ``n`` test images of the run's dataset, preprocessed like the model's training
    data (e.g. binarized) and quantized to 8 bits, in [0, 1]."""
    config = method.config
    spec = dataset_spec(config.data.name)
    split = spec.test_split if spec.test_split in spec.splits else train_split_name(config)
    dataset = load_split(config, split, data_dir)
    if not isinstance(dataset, ImageDataset):
        raise ConfigError("FID reference statistics need an in-memory dataset (not imagefolder).")
    images = dataset.images[:n]
    out = []
    for start in range(0, images.shape[0], 1000):
        batch = method.preprocess(images[start : start + 1000].to(method.device))
        out.append(quantize_images(batch).cpu())
    return torch.cat(out)


def run_fid(
    method: Method,
    mode: str = "random",
    n: int = 10000,
    n_ref: int = 10000,
    steps: int | None = None,
    weights: str | Path | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    images_out: str | Path | None = None,
    batch_size: int = 50,
) -> dict[str, Any]:
    """FID between ``n`` generated images and the first ``n_ref`` test images of the dataset.

    Reference statistics are cached per (dataset, split, n_ref, preprocessing, weights)
    (:func:`selfsup.evaluate.fid.cached_statistics`).
    """
    from selfsup.evaluate import fid

    started = time.perf_counter()
    model = fid.load_inception(weights, device)
    config = method.config
    binarize = getattr(config.model, "binarize", None)
    key = f"{config.data.name}-test-n{n_ref}-binarize{binarize}"

    def compute_reference() -> tuple[Any, Any]:
        ref = reference_images(method, n_ref, data_dir)
        return fid.feature_statistics(fid.inception_features(model, ref, batch_size, device))

    mu_r, sigma_r = fid.cached_statistics(key, compute_reference, weights)
    images = quantize_images(generate_images(method, n, mode, steps, seed=seed))
    if images_out is not None:
        save_image_folder(images, images_out)
    mu, sigma = fid.feature_statistics(fid.inception_features(model, images, batch_size, device))
    chain = getattr(config.model, "chain_steps", None) if steps is None else steps
    return {
        "fid": fid.frechet_distance(mu, sigma, mu_r, sigma_r),
        "mode": mode,
        "n_samples": n,
        "n_reference": n_ref,
        "steps": chain if mode == "limiting" else None,
        "reference": f"{config.data.name} test split, first {n_ref} images"
        + (f", binarized at {binarize}" if binarize is not None else ""),
        "inception": fid.describe_weights(weights),
        "method": config.method,
        "seconds": round(time.perf_counter() - started, 2),
    }
