"""Lightning wiring: batch loaders, checkpoints, signals, loggers and run directories.

Exact resume rests on three facts: every step's randomness is seeded from (seed, step, rank)
(:func:`selfsup.methods.base.step_seed`), the data order of an epoch is a permutation seeded from
(seed, epoch), and the loader's position in the epoch is saved in every checkpoint. A run killed at
any step and resumed from its last checkpoint therefore reaches the same weights as one that never
stopped (on CPU, with the same seed).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from selfsup.config import RunConfig
from selfsup.data.base import AnyDataset, DataInfo, ImageDataset
from selfsup.errors import ConfigError, RunError, SelfsupError
from selfsup.methods.base import Method

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"

# Lightning sets its loggers to INFO when imported: device lines, "Tip" adverts and "fit stopped"
# notes would fill every run's output. selfsup prints its own summary; warnings still show.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------------- data loaders
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class InMemoryBatches:
    """Batches of an in-memory uint8 dataset, drawn by index slicing (no per-sample collate).

    Epoch e visits ``randperm(N, seed + e)`` in global batches of ``global_batch`` (the last
    incomplete batch is dropped); process r of w takes the r-th of w equal shares of each global
    batch. The loader is resumable: Lightning saves ``state_dict()`` (epoch and
    batches consumed) in every checkpoint and restores it before iterating.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        self.images = dataset.images
        self.labels = dataset.labels
        self.global_batch = min(global_batch, len(dataset)) if drop_last else global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0

    def to(self, device: torch.device | str) -> InMemoryBatches:
        """Keep the uint8 images on ``device`` (e.g. the GPU) so batches need no copy."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world = _dist()
        n = self.images.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        for b in range(self.consumed, len(self)):
            batch = order[b * self.global_batch : min((b + 1) * self.global_batch, n)]
            idx = batch.tensor_split(world)[rank]  # equal shares; a last partial batch too
            if idx.numel():
                yield self.images[idx], self.labels[idx]


def fits_on_device(nbytes: int, free_bytes: int, fraction: float = 0.5) -> bool:
    """Whether a dataset of ``nbytes`` may live on the GPU: at most ``fraction`` of its free
    memory, leaving the rest to the model, activations and optimizer state."""
    return nbytes <= fraction * free_bytes


def _collate_uint8(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return images, labels


def make_loader(
    dataset: AnyDataset,
    batch_size: int,
    seed: int,
    train: bool,
    num_workers: int = 2,
    devices: int = 1,
) -> Any:
    """The loader for a dataset: in-memory slicing, or a worker DataLoader for streamed data."""
    if isinstance(dataset, ImageDataset):
        return InMemoryBatches(dataset, batch_size, seed, shuffle=train, drop_last=train)
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size // devices,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=_collate_uint8,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------ callbacks
class DataPosition(Callback):
    """Counts the batches trained in the current epoch so checkpoints know where to resume."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(self.loader, InMemoryBatches):
            self.loader.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if isinstance(self.loader, InMemoryBatches):
            self.loader.consumed += 1


class GracefulStop(Callback):
    """On SIGINT/SIGTERM: finish the current step, write ``last.ckpt`` and stop cleanly."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # a second signal: give up waiting for the step
            raise KeyboardInterrupt
        self.requested = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        if self.requested is not None and not trainer.should_stop:
            path = self.checkpoint_dir / LAST
            trainer.save_checkpoint(path, weights_only=False)
            if isinstance(pl_module, Method):
                pl_module.last_checkpoint = str(path)
            # Lightning ends the epoch when asked to stop; keep its end-of-epoch save from
            # overwriting this mid-epoch checkpoint (that would resume at the wrong position).
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback._last_global_step_saved = trainer.global_step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class RecordCheckpoint(Callback):
    """Keeps ``Method.last_checkpoint`` current (named in the non-finite-loss error)."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, ckpt: Any
    ) -> None:
        if isinstance(pl_module, Method):
            pl_module.last_checkpoint = str(self.checkpoint_dir / LAST)


class AtomicCheckpointIO(CheckpointIO):
    """Writes checkpoints to a temporary file in the same folder, fsyncs, then renames.

    A kill at any moment leaves either the previous complete file or the new complete file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(Path(path), map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


def load_checkpoint_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with a clear RunError for missing or corrupt files."""
    if not path.is_file():
        raise RunError(f"Checkpoint {path} does not exist. Train first, or check the run folder.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a corrupt file
        raise RunError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({type(exc).__name__}). "
            "Use an earlier checkpoint from the same folder (selfsup keeps periodic ones) or "
            "retrain."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunError(f"{path} is not a selfsup checkpoint (no model weights in it).")
    return checkpoint


# ---------------------------------------------------------------------------------- run folders
def check_output_dir(run_dir: Path, needed_bytes: int) -> None:
    """Fail before training when the run folder is unwritable or the disk too full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise RunError(
            f"Cannot write to the output folder {run_dir} ({exc.strerror or exc}). Choose a "
            "writable folder with --out, or fix its permissions."
        ) from None
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunError(
            f"Only {free / 2**20:.0f} MiB are free on the disk holding {run_dir}, but this run "
            f"needs about {needed_bytes / 2**20:.0f} MiB for its checkpoints and logs. Free some "
            "space or choose another folder with --out."
        )


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """Rough size of one checkpoint: weights plus two optimizer moments."""
    return 3 * sum(p.numel() * p.element_size() for p in module.parameters())


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path
    global_step: int
    epochs: int
    seconds: float
    samples_per_second: float
    interrupted: bool


def build_trainer(
    config: RunConfig, run_dir: Path, loader: Any, extra_callbacks: list[Callback]
) -> L.Trainer:
    """A Lightning Trainer configured from ``config.trainer`` writing into ``run_dir``."""
    tcfg = config.trainer
    ckpt_dir = run_dir / CHECKPOINT_DIR
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="epoch={epoch:04d}",
        auto_insert_metric_name=False,
        every_n_epochs=tcfg.checkpoint_every,
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=True,
    )
    callbacks: list[Callback] = [
        DataPosition(loader),
        RecordCheckpoint(ckpt_dir),
        GracefulStop(ckpt_dir),
        *extra_callbacks,
        periodic,
    ]
    if tcfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, len(loader) // 10 or 1))))
    loggers = [
        CSVLogger(save_dir=str(run_dir), name="", version=""),
        TensorBoardLogger(
            save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
        ),
    ]
    accelerator = "gpu" if tcfg.accelerator == "cuda" else tcfg.accelerator
    strategy: Any = tcfg.strategy
    if (
        strategy == "ddp"
        and accelerator in ("cpu",)
        or (strategy == "ddp" and not torch.cuda.is_available())
    ):
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator is {tcfg.accelerator!r} but PyTorch sees no CUDA GPU on this "
            "machine (torch.cuda.is_available() is False). Train on the CPU with --accelerator "
            "cpu (or auto), or install a CUDA build of PyTorch on a machine with a GPU."
        )
    precision: Any = tcfg.precision
    plugins: list[Any] = [AtomicCheckpointIO()]
    on_cuda = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "16-mixed" and not on_cuda:
        # Lightning would silently train in bf16 instead; honour the request: fp16 autocast with
        # a GradScaler (checkpointed and restored like on the GPU), slow on most CPUs.
        from lightning.pytorch.plugins.precision import MixedPrecision

        print(
            "selfsup: note: 16-mixed on the CPU runs fp16 autocast with a GradScaler, which most "
            "CPUs execute slowly; bf16-mixed is the fast CPU choice.",
            file=sys.stderr,
        )
        plugins.append(MixedPrecision("16-mixed", "cpu"))
        precision = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return L.Trainer(
            accelerator=accelerator,
            devices=tcfg.devices,
            strategy=strategy,
            precision=precision,
            max_epochs=tcfg.epochs,
            max_steps=tcfg.max_steps,
            gradient_clip_val=tcfg.gradient_clip or None,
            log_every_n_steps=tcfg.log_every,
            check_val_every_n_epoch=tcfg.val_every or None,
            limit_val_batches=1.0 if tcfg.val_every else 0,
            num_sanity_val_steps=0,
            deterministic=tcfg.deterministic,
            enable_progress_bar=tcfg.progress_bar,
            enable_model_summary=False,
            callbacks=callbacks,
            logger=loggers,
            plugins=plugins,
            default_root_dir=str(run_dir),
            use_distributed_sampler=False,
        )


def fit(
    method: Method,
    train_set: AnyDataset,
    val_set: AnyDataset | None,
    run_dir: Path,
    resume: bool = False,
    extra_callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train ``method`` on ``train_set`` writing checkpoints and logs to ``run_dir``."""
    config = method.config
    tcfg = config.trainer
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    check_output_dir(run_dir, needed_bytes=4 * checkpoint_bytes(method) + 10 * 2**20)
    n_train = len(train_set)  # type: ignore[arg-type]
    if config.data.batch_size > n_train:
        raise ConfigError(
            f"data.batch_size {config.data.batch_size} is larger than the training split "
            f"({n_train} samples of {config.data.name}), so not one full batch can be formed. "
            f"Use --batch-size {n_train} or less."
        )
    loader = make_loader(
        train_set, config.data.batch_size, config.seed, True, config.data.num_workers, tcfg.devices
    )
    if len(loader) == 0:
        raise SelfsupError(
            f"The training set has {len(train_set)} samples, fewer than one batch of "
            f"{config.data.batch_size}. Lower --batch-size."
        )
    val_loader = None
    if (
        val_set is not None
        and tcfg.val_every
        and method.online_probe is not None
        or (
            val_set is not None
            and tcfg.val_every
            and type(method).validation_loss is not Method.validation_loss
        )
    ):
        val_loader = make_loader(
            val_set,
            max(256, config.data.batch_size),
            config.seed,
            False,
            config.data.num_workers,
            tcfg.devices,
        )
    if tcfg.channels_last:
        method = method.to(memory_format=torch.channels_last)  # type: ignore[assignment]
    if tcfg.compile:
        method.compile_networks()
    callbacks = list(extra_callbacks or [])
    if tcfg.plots:  # figures into run_dir/images and TensorBoard, per epoch and at the end
        from selfsup.callbacks import RunPlots

        shown = val_set if val_set is not None else train_set
        callbacks.append(RunPlots(run_dir, shown, tcfg.plot_every, tcfg.embedding_plot))
    trainer = build_trainer(config, run_dir, loader, callbacks)
    method.steps_per_epoch = len(loader)
    device = trainer.strategy.root_device
    if isinstance(loader, InMemoryBatches) and config.data.on_device and device.type == "cuda":
        nbytes = loader.images.nbytes + loader.labels.nbytes
        free = torch.cuda.mem_get_info(device)[0]
        if fits_on_device(nbytes, free):
            loader.to(device)
        else:
            print(
                f"selfsup: note: the training images ({nbytes / 2**30:.1f} GiB) would take more "
                f"than half of the GPU's free memory ({free / 2**30:.1f} GiB), so they stay in "
                "host memory and each batch is copied to the GPU. Set data.on_device=false to "
                "choose this yourself.",
                file=sys.stderr,
            )
    ckpt_path = run_dir / CHECKPOINT_DIR / LAST if resume else None
    if ckpt_path is not None:
        load_checkpoint_file(ckpt_path)  # clear error for a corrupt file before Lightning sees it
        method.last_checkpoint = str(ckpt_path)
    start_step = 0
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")  # we append
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        trainer.fit(
            method,
            train_dataloaders=loader,
            val_dataloaders=val_loader,
            ckpt_path=str(ckpt_path) if ckpt_path else None,
        )
    seconds = time.perf_counter() - started
    interrupted = any(
        isinstance(c, GracefulStop) and c.requested is not None for c in trainer.callbacks
    )
    last = run_dir / CHECKPOINT_DIR / LAST
    if not interrupted:
        trainer.save_checkpoint(last, weights_only=False)  # a collective under DDP: rank 0 writes
    steps = trainer.global_step - start_step
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=last,
        global_step=trainer.global_step,
        epochs=trainer.current_epoch,
        seconds=seconds,
        samples_per_second=steps * config.data.batch_size / max(seconds, 1e-9),
        interrupted=interrupted,
    )


def data_info(dataset: AnyDataset) -> DataInfo:
    """The facts about a dataset a method needs to build its networks."""
    has_labels = (
        dataset.has_labels if isinstance(dataset, ImageDataset) else dataset.num_classes > 0
    )
    return DataInfo(
        name=dataset.name,
        image_shape=tuple(dataset.image_shape),  # type: ignore[arg-type]
        num_classes=dataset.num_classes,
        has_labels=has_labels,
    )
