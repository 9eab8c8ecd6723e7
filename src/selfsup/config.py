"""Typed run configuration: dataclasses per component, YAML presets, overrides and validation.

A run's configuration is resolved in layers, each overriding the one before:

1. the dataclass defaults of every section (``data``, ``augment``, ``optim``, ``trainer``, and the
   method's own ``model`` dataclass);
2. the method's dataset-dependent defaults (``Method.default_config(spec)``, e.g. augmentations that
   fit the image size);
3. the preset ``configs/<method>/<dataset>.yaml`` when one exists (the paper's recipe);
4. the user's ``--config FILE.yaml``;
5. command-line flags and ``--set key=value`` overrides.

Unknown keys, wrong types and out-of-range values raise :class:`~selfsup.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.catalog import PRESET_DIR
from selfsup.data.augment import AugmentConfig
from selfsup.errors import ConfigError
from selfsup.optim import OptimConfig

#: Weights stay float32 in every supported setting: the batched augmentation, the losses and the
#: online probe compute in float32, so "bf16-true" / "64-true" (weights in another dtype) are
#: refused.
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")


@dataclass
class DataConfig:
    """Which dataset to train on and how batches are formed.

    ``batch_size`` is the global batch (summed over all devices of all nodes); each process gets
    ``batch_size / (devices * num_nodes)`` samples. ``train_split`` empty means the dataset's train
    split. Streamed datasets are read by ``num_workers`` DataLoader workers per process; image
    folders are decoded there (``decode: workers``) or on the training device with
    ``torchvision.io.decode_jpeg`` (``decode: device``; nvJPEG on a GPU).

    Factor datasets (dSprites, MPI3D): ``split_scheme`` ``ood`` (train on some factor
    combinations, val/test on unseen ones) or ``iid`` (random splits of the same sizes); ``ood_k``
    the number of combinations trained on (0: the dataset's default, dSprites 2, MPI3D 3);
    ``heldout_fraction`` of train kept aside (fixed seed) as the in-distribution held-out split;
    ``heldout_split: released`` instead keeps ``n_train`` train images and holds out the
    soft-discretization code's random_split (seeds 100 and 102).
    """

    name: str = "digits"
    dir: str = "data"
    batch_size: int = 128
    download: bool = False
    train_split: str = ""
    image_size: int = 64
    root: str = "imagefolder"
    num_workers: int = 2
    on_device: bool = True
    decode: str = "workers"
    split_scheme: str = "ood"
    ood_k: int = 0
    heldout_fraction: float = 0.1
    heldout_split: str = "fraction"
    n_train: int = 0

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}.")
        if self.image_size < 4:
            raise ConfigError(f"data.image_size must be >= 4 pixels, got {self.image_size}.")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        if self.decode not in ("workers", "device"):
            raise ConfigError(
                f"data.decode {self.decode!r} is unknown; use workers (decode image files in the "
                "DataLoader workers) or device (decode_jpeg on the training device, e.g. the GPU)."
            )
        from selfsup.data.splits import check_split_options

        check_split_options(self.name, self.split_scheme, self.ood_k, self.heldout_fraction,
                            self.heldout_split, self.n_train)


@dataclass
class TrainerConfig:
    """Training loop settings (passed to Lightning's Trainer where they have an equivalent).

    ``epochs`` bounds training; ``max_steps`` > 0 stops earlier. Checkpoints are written every
    ``checkpoint_every`` epochs (the newest ``keep_checkpoints`` of them are kept) plus
    ``last.ckpt`` at each of them, at the end, and on interrupt. ``log_every`` is in optimizer
    steps. ``devices`` processes run on each of ``num_nodes`` machines (README: Many machines);
    ``sync_batchnorm`` computes BatchNorm statistics over all of them (GPUs only). ``plots``
    writes figures into ``images/`` every ``plot_every`` epochs and at the end
    (``embedding_plot``: tsne, umap, pca or none).
    """

    epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    sync_batchnorm: bool = False
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip: float = 0.0
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    log_every: int = 50
    val_every: int = 1
    deterministic: bool = False
    check_finite: bool = True
    online_probe: bool = True
    online_probe_lr: float = 1e-3
    progress_bar: bool = True
    compile: bool = False
    channels_last: bool = False
    plots: bool = True
    plot_every: int = 1
    embedding_plot: str = "tsne"
    num_threads: int = 0

    def validate(self) -> None:
        if self.num_threads < 0:
            raise ConfigError(
                f"trainer.num_threads must be >= 0 (0 = PyTorch's default), got {self.num_threads}."
            )
        if self.epochs < 1:
            raise ConfigError(f"trainer.epochs must be >= 1, got {self.epochs}.")
        if self.devices < 1:
            raise ConfigError(f"trainer.devices must be >= 1, got {self.devices}.")
        if self.num_nodes < 1:
            raise ConfigError(f"trainer.num_nodes must be >= 1, got {self.num_nodes}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision {self.precision!r} is not supported; use one of "
                f"{', '.join(PRECISIONS)} (bf16-mixed is the fast choice on recent CPUs and GPUs; "
                "the weights stay float32, so bf16-true and 64-true are not offered)."
            )
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ConfigError(
                f"trainer.accelerator {self.accelerator!r} is unknown; use auto, cpu or gpu."
            )
        if self.strategy not in ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"):
            raise ConfigError(
                f"trainer.strategy {self.strategy!r} is unknown; use auto or ddp (one process "
                "per device, the recommended multi-GPU strategy)."
            )
        if self.embedding_plot not in ("tsne", "umap", "pca", "none"):
            raise ConfigError(
                f"trainer.embedding_plot {self.embedding_plot!r} is unknown; use tsne, umap, pca "
                "(fast) or none."
            )
        if self.embedding_plot == "umap" and importlib.util.find_spec("umap") is None:
            raise ConfigError(
                "trainer.embedding_plot umap needs the umap-learn package, which is not "
                "installed. Install it with `pip install umap-learn` (or `pip install "
                "selfsup[umap]`), or use tsne or pca."
            )
        for name in ("checkpoint_every", "log_every", "plot_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}.")
        if self.keep_checkpoints < 0:
            raise ConfigError(
                f"trainer.keep_checkpoints must be >= 0 (0 = only last.ckpt), got "
                f"{self.keep_checkpoints}."
            )
        if self.val_every < 0:
            raise ConfigError(f"trainer.val_every must be >= 0 (0 = never), got {self.val_every}.")
        if self.gradient_clip < 0:
            raise ConfigError(f"trainer.gradient_clip must be >= 0, got {self.gradient_clip}.")
        if self.online_probe_lr <= 0:
            raise ConfigError(f"trainer.online_probe_lr must be > 0, got {self.online_probe_lr}.")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
}


@dataclass
class RunConfig:
    """The complete, validated configuration of one run."""

    method: str
    model: Any
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return {
            "method": self.method,
            "seed": self.seed,
            "data": dataclasses.asdict(self.data),
            "augment": dataclasses.asdict(self.augment),
            "optim": dataclasses.asdict(self.optim),
            "trainer": dataclasses.asdict(self.trainer),
            "model": dataclasses.asdict(self.model),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self) -> None:
        for section in (self.data, self.augment, self.optim, self.trainer, self.model):
            validate = getattr(section, "validate", None)
            if validate is not None:
                validate()
        devices = self.trainer.devices
        processes = devices * self.trainer.num_nodes
        if self.data.batch_size < processes or self.data.batch_size % processes:
            raise ConfigError(
                f"data.batch_size {self.data.batch_size} must be a multiple of trainer.devices x "
                f"trainer.num_nodes ({devices} x {self.trainer.num_nodes} = {processes}): each "
                "process gets batch_size / (devices x num_nodes) samples of the global batch."
            )


def check_choices(method: str, choices: dict[str, tuple[Any, Any]]) -> None:
    """Raise ConfigError for the first ``model.KEY`` whose value is not among its allowed ones.

    ``choices`` maps a key to ``(value, allowed values)``.
    """
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(
                f"model.{key} {value!r} is not a valid choice for {method}; use one of "
                f"{', '.join(str(a) for a in allowed)}."
            )


def preset_path(method: str, dataset: str) -> Path:
    """Where the preset for ``method`` on ``dataset`` lives (it may not exist).

    ``configs/METHOD/DATASET.yaml``, else the dataset family's ``configs/METHOD/FAMILY.yaml``,
    the family being the name before its first ``-`` (``mpi3d-toy`` -> ``mpi3d``,
    ``dsprites-procedural`` -> ``dsprites``): variants of one dataset share one recipe.
    """
    exact = PRESET_DIR / method / f"{dataset}.yaml"
    family = PRESET_DIR / method / f"{dataset.split('-')[0]}.yaml"
    return exact if exact.is_file() or not family.is_file() else family


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        installed = PRESET_DIR / Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else None
        hint = (
            f" The installed preset of that name is `--preset {path.parent.name}/{path.stem}`."
            if installed is not None and installed.is_file()
            else f" Installed presets are named with --preset METHOD/NAME (files in {PRESET_DIR})."
        )
        raise ConfigError(f"Config file {path} does not exist. Check the path given to --config."
                          + hint)
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, not {type(content)}.")
    return content


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "model.hidden=[32, 16]"]`` into a nested dict.

    OmegaConf's ``from_dotlist`` does the parsing (values as YAML: ``1e-3``, ``[32, 16]``,
    ``true``); ``key=`` is the empty string. A malformed item is a ConfigError naming it.
    """
    dotlist = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(
                f"Override {item!r} must look like section.key=value, e.g. --set optim.lr=0.001."
            )
        entry = f"{key}={raw}" if raw.strip() else f"{key}=''"
        try:
            OmegaConf.from_dotlist([entry])
        except (OmegaConfBaseException, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"Override {item!r}: the value {raw!r} cannot be parsed ({first}). Quote strings "
                "and close brackets, e.g. --set model.hidden=[32,16]."
            ) from None
        dotlist.append(entry)
    container = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist), resolve=False)
    return container  # type: ignore[return-value]


def field_names(model_class: type) -> dict[str, list[str]]:
    """Map each field name to the sections that define it (for ``--flag-name`` lookup)."""
    owners: dict[str, list[str]] = {}
    for section, cls in {**SECTIONS, "model": model_class}.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(section)
    return owners


def flags_to_overrides(flags: dict[str, Any], model_class: type) -> dict[str, Any]:
    """Map free-form flags (``encode_method``: value) to the unique section defining that key.

    Model keys win over other sections when a name is defined in several (e.g. ``model.lr``).
    """
    owners = field_names(model_class)
    nested: dict[str, Any] = {}
    for name, value in flags.items():
        sections = owners.get(name)
        if not sections:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"Unknown option {flag}: no config section has a key {name!r}. Run "
                "`selfsup train METHOD --help` for the options, or use --set SECTION.KEY=VALUE."
            )
        section = "model" if "model" in sections else sections[0]
        nested.setdefault(section, {})[name] = value
    return nested


def _structured(cls: type) -> DictConfig:
    node = OmegaConf.structured(cls)
    OmegaConf.set_struct(node, True)
    return node


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    return f"{key}: {msg}" if key else msg


def resolve_config(
    method: str,
    model_class: type,
    layers: list[tuple[str, dict[str, Any]]],
) -> RunConfig:
    """Merge ``layers`` (name, nested dict) over the defaults and return a validated RunConfig.

    The layer name appears in error messages so the user knows which source was wrong.
    """
    schema = OmegaConf.create(
        {
            "method": method,
            "seed": 0,
            "data": _structured(DataConfig),
            "augment": _structured(AugmentConfig),
            "optim": _structured(OptimConfig),
            "trainer": _structured(TrainerConfig),
            "model": _structured(model_class),
        }
    )
    OmegaConf.set_struct(schema, True)
    merged = schema
    for source, layer in layers:
        layer = dict(layer)
        declared = layer.pop("method", method)
        if declared != method:
            raise ConfigError(
                f"{source} is a config for method {declared!r}, but the run trains {method!r}. "
                "Use a config written for this method, or remove its `method:` line."
            )
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        except OmegaConfBaseException as exc:
            raise ConfigError(
                f"Invalid configuration in {source}: {_describe(exc)}. Valid sections are "
                f"seed, data, augment, optim, trainer and model; `selfsup train {method} --help` "
                "lists the keys."
            ) from None
    try:
        seed = merged.seed
        if not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}.")
        config = RunConfig(
            method=method,
            seed=seed,
            data=OmegaConf.to_object(merged.data),
            augment=OmegaConf.to_object(merged.augment),
            optim=OmegaConf.to_object(merged.optim),
            trainer=OmegaConf.to_object(merged.trainer),
            model=OmegaConf.to_object(merged.model),
        )
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Invalid configuration: {_describe(exc)}.") from None
    config.validate()
    return config


def config_from_dict(content: dict[str, Any], model_class: type, source: str) -> RunConfig:
    """Rebuild a saved RunConfig (e.g. a run directory's ``config.yaml``)."""
    method = content.get("method")
    if not isinstance(method, str):
        raise ConfigError(f"{source} has no `method:` entry; it is not a selfsup run config.")
    return resolve_config(method, model_class, [(source, content)])
