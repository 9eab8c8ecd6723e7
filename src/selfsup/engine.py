"""Lightning wiring: batch loaders, checkpoints, signals, loggers and run directories.

Exact resume rests on three facts: every step's randomness is seeded from (seed, step, rank)
(:func:`selfsup.methods.base.step_seed`), the data order of an epoch is a permutation seeded from
(seed, epoch), and the loader's position in the epoch is saved in every checkpoint. A run killed at
any step and resumed from its last checkpoint therefore reaches the same weights as one that never
stopped (on CPU, with the same seed).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from selfsup.config import RunConfig
from selfsup.data.base import AnyDataset, DataInfo, ImageDataset
from selfsup.data.streaming import GlobalBatches, StreamingBatches
from selfsup.errors import ConfigError, RunError, SelfsupError
from selfsup.methods.base import Method
from selfsup.rundir import (
    CHECKPOINT_DIR,
    LAST,
    PERIODIC,
    TENSORBOARD_DIR,
    RunFolder,
    load_checkpoint,
    save_atomically,
)

#: The checkpoint reader every command uses (kept under its old name).
load_checkpoint_file = load_checkpoint
#: DataInfo of a loaded dataset (kept under its old name).
data_info = DataInfo.of

# Lightning sets its loggers to INFO when imported: device lines, "Tip" adverts and "fit stopped"
# notes would fill every run's output. selfsup prints its own summary; warnings still show.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------------- data loaders
class InMemoryBatches(GlobalBatches):
    """Batches of an in-memory uint8 dataset, drawn by index slicing (no per-sample collate).

    Epoch e visits ``randperm(N, seed + e)`` in global batches of ``global_batch`` (the last
    incomplete batch is dropped); process r of w takes the r-th of w equal shares of each global
    batch. The loader is resumable: Lightning saves ``state_dict()`` (epoch and
    batches consumed) in every checkpoint and restores it before iterating
    (:class:`~selfsup.data.streaming.GlobalBatches`).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(len(dataset), global_batch, seed, shuffle, drop_last)
        self.images = dataset.images
        self.labels = dataset.labels

    def to(self, device: torch.device | str) -> InMemoryBatches:
        """Keep the uint8 images on ``device`` (e.g. the GPU) so batches need no copy."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.shares(self.order(self.images.device)):
            yield self.images[idx], self.labels[idx]


def fits_on_device(nbytes: int, free_bytes: int, fraction: float = 0.5) -> bool:
    """Whether a dataset of ``nbytes`` may live on the GPU: at most ``fraction`` of its free
    memory, leaving the rest to the model, activations and optimizer state."""
    return nbytes <= fraction * free_bytes


def make_loader(
    dataset: AnyDataset,
    batch_size: int,
    seed: int,
    train: bool,
    num_workers: int = 2,
    devices: int = 1,
    *,
    augment: Any = None,
    n_views: int = 1,
    decode: str = "workers",
    clean: bool = True,
) -> InMemoryBatches | StreamingBatches:
    """The loader for a dataset: in-memory slicing, or resumable sharded batches read by
    DataLoader workers for streamed data. Image folders (``training_views``) take ``n_views``
    random resized crops per image from the full-resolution file when training with ``augment``
    (``decode``: ``workers`` or ``device``; ``clean``: also the evaluation view; see
    :mod:`selfsup.data.imagefolder`)."""
    if isinstance(dataset, ImageDataset):
        return InMemoryBatches(dataset, batch_size, seed, shuffle=train, drop_last=train)
    crops = train and augment is not None and hasattr(dataset, "training_views")
    items = dataset.training_views(augment, n_views, seed, decode, clean) if crops else dataset
    return StreamingBatches(
        items, batch_size, seed, shuffle=train, drop_last=train, num_workers=num_workers,
        epoch_keys=crops,
    )


# ------------------------------------------------------------------------------------ callbacks
class TrainingAborted(Exception):
    """A second Ctrl-C (or one before the first step): stop at once, without a checkpoint."""


class _Critical:
    """Code a stop must not cut short (writing a checkpoint): an abort requested inside it is
    raised when it ends."""

    depth = 0
    pending = False

    @classmethod
    @contextmanager
    def section(cls) -> Iterator[None]:
        cls.depth += 1
        try:
            yield
        finally:
            cls.depth -= 1
        if cls.depth == 0 and cls.pending:
            cls.pending = False
            raise TrainingAborted("stopped after the checkpoint being written was complete")


class DataPosition(Callback):
    """Counts the batches trained in the current epoch so checkpoints know where to resume."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(self.loader, GlobalBatches):
            self.loader.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if isinstance(self.loader, GlobalBatches):
            self.loader.consumed += 1


class SampleCounter(Callback):
    """Counts the training samples of this session (all processes): samples/s is samples over
    wall time, whatever the optimizer steps per batch, the batch clamping or the resume point."""

    def __init__(self) -> None:
        self.samples = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.samples += int(images.shape[0]) * trainer.world_size


class GracefulStop(Callback):
    """On SIGINT/SIGTERM: finish the current step, write ``last.ckpt`` and stop cleanly.

    A second signal (or one before the first step) raises :class:`TrainingAborted` at once: the
    step in flight is dropped and the last checkpoint on disk is where a resume starts.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.requested: int | None = None
        self.started = False
        self.finishing = False  # training is over: let the session be saved and recorded
        self.aborting = False  # an abort was requested (whatever exception it surfaces as)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.finishing:
            print("selfsup: stopping: recording the session first.", file=sys.stderr)
            return
        if self.requested is not None or not self.started:
            self.aborting = True
            for sig, previous in self._previous.items():  # a third signal: the default action
                signal.signal(sig, previous)
            if _Critical.depth:
                _Critical.pending = True
                return
            raise TrainingAborted(signum)
        self.requested = signum

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True
        for sig in self._previous:  # Lightning installed its own SIGTERM handler meanwhile
            signal.signal(sig, self._handler)

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


class RecordCheckpoint(Callback):
    """Keeps ``Method.last_checkpoint`` current (named in the non-finite-loss error) and the
    step and epoch of the newest checkpoint (what a session that fails or is aborted leaves)."""

    def __init__(self, checkpoint_dir: Path, step: int = 0, epoch: int = 0) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.step = step
        self.epoch = epoch

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, ckpt: Any
    ) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        self.step = trainer.global_step
        self.epoch = batches // max(1, int(trainer.num_training_batches))  # epochs completed
        if isinstance(pl_module, Method):
            pl_module.last_checkpoint = str(self.checkpoint_dir / LAST)


class RunCheckpoints(ModelCheckpoint):
    """``last.ckpt`` (replaced in place, never ``last-v1.ckpt``) plus periodic checkpoints every
    ``every`` epochs, of which the newest ``keep`` are kept."""

    def __init__(self, checkpoint_dir: Path, every: int, keep: int) -> None:
        super().__init__(
            dirpath=checkpoint_dir,
            filename=PERIODIC,
            auto_insert_metric_name=False,
            every_n_epochs=every,
            save_top_k=-1 if keep > 0 else 0,
            save_last=True,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.folder = RunFolder(checkpoint_dir.parent)
        self.keep = keep

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: ``fit`` writes ``last.ckpt`` at the end of a session itself, and after a
        Ctrl-C Lightning's end-of-training save would overwrite the mid-epoch checkpoint
        :class:`GracefulStop` wrote with a state whose epoch counts as finished."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            periodic = self.folder.periodic_checkpoints()
            for old in periodic[: max(0, len(periodic) - self.keep)]:
                trainer.strategy.remove_checkpoint(old)


class AtomicCheckpointIO(CheckpointIO):
    """Writes checkpoints to a temporary file in the same folder, fsyncs, renames, fsyncs the
    folder; reads them with the safe loader (:func:`selfsup.rundir.load_checkpoint`).

    Why not Lightning's own atomic save (``TorchCheckpointIO``, lightning 2.6): it buffers the
    whole checkpoint in memory, writes it to a temporary file in the *system* temp folder and
    moves it into place without any fsync. When ``/tmp`` is another filesystem the move is a
    copy (not atomic), and without fsync a machine crash shortly after a save can leave an empty
    or truncated ``last.ckpt`` behind a completed rename. The fsync is what makes "a kill at any
    moment leaves the previous or the new complete file" hold across power loss too.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        with _Critical.section():
            save_atomically(lambda handle: torch.save(checkpoint, handle), Path(path))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        return load_checkpoint(Path(path), map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but appending to an existing ``metrics.csv`` (a resumed session
    continues the file instead of deleting it) and keeping its columns."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        try:
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])
        except OSError:
            self.metrics_keys = []

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        pass


class AppendingCSVLogger(CSVLogger):
    """A CSVLogger whose ``metrics.csv`` covers every training session of a run."""

    @property
    @rank_zero_experiment  # other processes get a dummy: they create nothing in the run folder
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# ---------------------------------------------------------------------------------- run folders
def check_output_dir(run_dir: Path, needed_bytes: int) -> None:
    """Fail before training when the run folder is unwritable or the disk too full."""
    RunFolder(run_dir).check_writable(
        "training writes its checkpoints and logs there",
        "Choose a writable folder with --out, or fix its permissions.",
    )
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunError(
            f"Only {free / 2**20:.0f} MiB are free on the disk holding {run_dir}, but this run "
            f"needs about {needed_bytes / 2**20:.0f} MiB for the checkpoints it keeps and its "
            "logs. Free some space, keep fewer checkpoints (--set trainer.keep_checkpoints=N) or "
            "choose another folder with --out."
        )


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """Rough size of one checkpoint: weights plus two optimizer moments."""
    return 3 * sum(p.numel() * p.element_size() for p in module.parameters())


def needed_bytes(module: torch.nn.Module, keep_checkpoints: int) -> int:
    """Disk space a run needs: the periodic checkpoints it keeps, ``last.ckpt``, the temporary
    copy an atomic save writes before renaming, and 10 MiB of logs."""
    return (keep_checkpoints + 2) * checkpoint_bytes(module) + 10 * 2**20


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path
    global_step: int
    epochs: int
    seconds: float
    samples_per_second: float
    interrupted: bool
    start_step: int = 0
    samples: int = 0
    aborted: bool = False


# -------------------------------------------------------------------------------- many machines
def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0 as its launcher set it up, before any process
    group exists: ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), ``NODE_RANK`` / ``LOCAL_RANK``
    (Lightning's own launcher). Only rank 0 writes the run folder."""
    env = os.environ
    ranks = [env.get("RANK", env.get("SLURM_PROCID", "0")), env.get("NODE_RANK", "0"),
             env.get("LOCAL_RANK", "0")]
    return all(int(r or 0) == 0 for r in ranks)


def launcher_topology() -> tuple[int, int] | None:
    """(processes per node, nodes) fixed by an external launcher (torchrun or srun), else None."""
    env = os.environ
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        world = int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        return local, max(1, world // max(1, local))
    per_node = env.get("SLURM_NTASKS_PER_NODE", "")
    if "SLURM_NTASKS" in env and per_node.isdigit() and env.get("SLURM_JOB_NAME") not in (
        "bash", "interactive"
    ):
        return int(per_node), int(env.get("SLURM_NNODES", "1"))
    return None


def check_topology(tcfg: Any) -> None:
    """ConfigError when ``trainer.devices`` x ``trainer.num_nodes`` cannot be what was launched."""
    fixed = launcher_topology()
    if fixed is not None and (tcfg.devices, tcfg.num_nodes) != fixed:
        raise ConfigError(
            f"The launcher started {fixed[1]} node(s) x {fixed[0]} process(es) per node, but "
            f"trainer.devices is {tcfg.devices} and trainer.num_nodes is {tcfg.num_nodes}. Pass "
            f"--devices {fixed[0]} --num-nodes {fixed[1]} (also when resuming with --resume) so "
            "that they match (README: Many machines)."
        )
    if fixed is None and tcfg.num_nodes > 1 and "MASTER_ADDR" not in os.environ:
        raise ConfigError(
            f"trainer.num_nodes is {tcfg.num_nodes}, but nothing launched this process as one of "
            f"{tcfg.num_nodes} machines. Start the same command on every machine with torchrun "
            "(--nnodes, --node-rank, --master-addr, --master-port) or srun, or set MASTER_ADDR, "
            "MASTER_PORT and NODE_RANK on each (README: Many machines). To continue a multi-node "
            "run on this machine alone, pass --num-nodes 1 with --resume."
        )
    if tcfg.sync_batchnorm and tcfg.devices * tcfg.num_nodes > 1 and (
        tcfg.accelerator == "cpu" or not torch.cuda.is_available()
    ):
        raise ConfigError(
            "trainer.sync_batchnorm needs GPUs: PyTorch synchronises BatchNorm statistics only "
            "for CUDA tensors. Set trainer.sync_batchnorm=false to train on CPUs."
        )


def build_trainer(
    config: RunConfig,
    run_dir: Path,
    loader: Any,
    extra_callbacks: list[Callback],
    resume_step: int | None = None,
) -> L.Trainer:
    """A Lightning Trainer configured from ``config.trainer`` writing into ``run_dir``.

    ``resume_step``: the logging step of the checkpoint a resume starts from; TensorBoard hides
    the events a killed session logged after it.
    """
    tcfg = config.trainer
    check_topology(tcfg)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    callbacks: list[Callback] = [
        DataPosition(loader),
        RecordCheckpoint(ckpt_dir),
        GracefulStop(ckpt_dir),
        SampleCounter(),
        *extra_callbacks,
        RunCheckpoints(ckpt_dir, tcfg.checkpoint_every, tcfg.keep_checkpoints),
    ]
    if tcfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, len(loader) // 10 or 1))))
    tensorboard: dict[str, Any] = {} if resume_step is None else {"purge_step": resume_step}
    loggers = [
        AppendingCSVLogger(save_dir=str(run_dir), name="", version=""),
        TensorBoardLogger(
            save_dir=str(run_dir), name=TENSORBOARD_DIR, version="", default_hp_metric=False,
            **tensorboard,
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
            num_nodes=tcfg.num_nodes,
            sync_batchnorm=tcfg.sync_batchnorm,
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


@dataclass(frozen=True)
class Position:
    """Where a checkpoint stands: optimizer steps, batches trained, and the logging step."""

    global_step: int
    batches: int
    log_step: int

    @classmethod
    def of(cls, checkpoint: dict[str, Any]) -> Position:
        step = int(checkpoint.get("global_step", 0))
        loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        try:  # a save from on_train_batch_end counts its batch as processed, not yet completed
            total = loop["epoch_loop.batch_progress"]["total"]
            batches, pending = int(total["processed"]), int(total["processed"] - total["completed"])
        except (KeyError, TypeError, ValueError):
            batches, pending = step, 0
        try:  # Lightning adds the pending batch when it restarts from such a checkpoint
            log_step = int(loop["epoch_loop.state_dict"]["_batches_that_stepped"]) + pending
        except (KeyError, TypeError, ValueError):
            log_step = batches
        return cls(step, batches, log_step)


def check_work_left(config: RunConfig, position: Position, steps_per_epoch: int,
                    run_dir: Path) -> None:
    """RunError when a resume from ``position`` would train nothing (the budget is spent)."""
    tcfg = config.trainer
    epochs_done = position.batches / max(1, steps_per_epoch)
    by_epochs = epochs_done >= tcfg.epochs
    by_steps = tcfg.max_steps > 0 and position.global_step >= tcfg.max_steps
    if not (by_epochs or by_steps):
        return
    reached = []
    if by_epochs:
        reached.append(f"trainer.epochs={tcfg.epochs}")
    if by_steps:
        reached.append(f"trainer.max_steps={tcfg.max_steps}")
    raise RunError(
        f"The run {run_dir} has already trained its budget ({position.global_step} steps, "
        f"{epochs_done:g} epochs of {steps_per_epoch} batches; it reached "
        f"{' and '.join(reached)}), so a resume would train nothing. To train further, raise "
        f"the limit it reached: `selfsup train --resume {run_dir} --epochs N` with N > "
        f"{math.floor(epochs_done)}"
        + (
            f" together with --set trainer.max_steps=M (M > {position.global_step}, or -1 to "
            "let the epochs decide)"
            if by_steps else ""
        )
        + "."
    )


def steps_per_epoch(train_set: AnyDataset, config: RunConfig) -> int:
    """Batches per epoch of ``train_set`` with the run's batch size (what ``fit`` will train)."""
    return len(
        make_loader(train_set, config.data.batch_size, config.seed, True, 0,
                    config.trainer.devices)
    )


def fit(
    method: Method,
    train_set: AnyDataset,
    val_set: AnyDataset | None,
    run_dir: Path,
    resume: bool = False,
    extra_callbacks: list[Callback] | None = None,
    before_training: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``method`` on ``train_set`` writing checkpoints and logs to ``run_dir``.

    With ``resume`` the session continues from ``checkpoints/last.ckpt`` (loaded safely), after
    checking that there is something left to train; ``metrics.csv`` and TensorBoard continue
    from the checkpoint's step. ``before_training`` runs once all checks have passed.

    Every session that leaves a checkpoint is recorded in ``training.json`` (also one that
    fails, with its error). A second Ctrl-C returns a result with ``aborted`` set (the last
    checkpoint on disk is where a resume starts).
    """
    config = method.config
    tcfg = config.trainer
    folder = RunFolder(run_dir)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    if launched_as_rank_zero():  # the only process that writes into the run folder
        check_output_dir(run_dir, needed_bytes(method, tcfg.keep_checkpoints))
    n_train = len(train_set)  # type: ignore[arg-type]
    if config.data.batch_size > n_train:
        raise ConfigError(
            f"data.batch_size {config.data.batch_size} is larger than the training split "
            f"({n_train} samples of {config.data.name}), so not one full batch can be formed. "
            f"Use --batch-size {n_train} or less."
        )
    loader = make_loader(
        train_set, config.data.batch_size, config.seed, True, config.data.num_workers,
        tcfg.devices, augment=config.augment, n_views=method.train_views(),
        decode=config.data.decode, clean=method.train_uses_clean(),
    )
    if len(loader) == 0:
        raise SelfsupError(
            f"The training set has {len(train_set)} samples, fewer than one batch of "
            f"{config.data.batch_size}. Lower --batch-size."
        )
    position = Position(0, 0, 0)
    if resume:
        position = Position.of(load_checkpoint(folder.last_checkpoint))  # refuses unsafe files
        check_work_left(config, position, len(loader), run_dir)
        method.last_checkpoint = str(folder.last_checkpoint)
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
    trainer = build_trainer(config, run_dir, loader, callbacks,
                            resume_step=position.log_step if resume else None)
    method.steps_per_epoch = len(loader)
    device = trainer.strategy.root_device
    if isinstance(loader, StreamingBatches):
        loader.device = device  # data.decode=device decodes there; pinned memory for a GPU
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
    if before_training is not None:
        before_training()
    if resume and trainer.is_global_zero:
        folder.truncate_metrics(position.log_step)  # rows a killed session logged after it
    saved = next(c for c in trainer.callbacks if isinstance(c, RecordCheckpoint))
    saved.step, saved.epoch = position.global_step, position.batches // len(loader)
    stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
    counter = next(c for c in trainer.callbacks if isinstance(c, SampleCounter))
    aborted = False
    error: BaseException | None = None
    started = time.perf_counter()
    stop.install()
    try:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*sync_dist.*")
                warnings.filterwarnings("ignore", message=".*LeafSpec.*")
                warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")
                warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
                warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists.*")
                trainer.fit(
                    method,
                    train_dataloaders=loader,
                    val_dataloaders=val_loader,
                    ckpt_path=str(folder.last_checkpoint) if resume else None,
                )
        except TrainingAborted:
            aborted = True
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the session is recorded
            if stop.aborting:  # the abort surfaced as another error (e.g. inside a library)
                aborted = True
            else:
                error = exc
        stop.finishing = True  # a Ctrl-C from here on waits for the session to be recorded
        seconds = time.perf_counter() - started
        interrupted = aborted or stop.requested is not None
        last = folder.last_checkpoint
        if not interrupted and error is None:
            trainer.save_checkpoint(last, weights_only=False)  # a collective under DDP
        lost = aborted or error is not None  # the steps after the newest checkpoint are not kept
        result = TrainResult(
            run_dir=run_dir,
            last_checkpoint=last,
            global_step=saved.step if lost else trainer.global_step,
            epochs=saved.epoch if lost else trainer.current_epoch,
            seconds=seconds,
            samples_per_second=counter.samples / max(seconds, 1e-9),
            interrupted=interrupted,
            start_step=position.global_step,
            samples=counter.samples,
            aborted=aborted,
        )
        if trainer.is_global_zero and folder.has_checkpoint():  # a failed start keeps nothing
            folder.record_session(
                result, error=None if error is None else f"{type(error).__name__}: {error}"
            )
    finally:
        stop.restore()
    if error is not None:
        raise error
    return result
