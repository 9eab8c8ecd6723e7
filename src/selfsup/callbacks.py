"""Figures written while a run trains (``trainer.plots``), into ``RUN_DIR/images/`` and TensorBoard.

Every ``trainer.plot_every`` epochs and at the end of training, process 0 writes

- ``loss_curves.png``: every logged loss term (per step, moving average, epoch means);
- ``online_probe.png``: the online linear probe's accuracy (train batches and validation);
- for generative methods ``reconstructions.png`` and ``samples.png``, and for models with a latent
  space (``Method.latent`` / ``Method.decode``) ``latent_traversals.png``;

and at the end ``embedding.png``: a t-SNE (or UMAP, or PCA) of at most ``max_points``
representations of the evaluation split, colored by label. Each figure is also added to the run's
TensorBoard log under ``images/<name>`` at the current global step. Figures never touch the
training randomness: the random number generators are forked around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from selfsup import plots
from selfsup.data.base import AnyDataset, ImageDataset
from selfsup.methods.base import Method
from selfsup.rundir import RunFolder


def subset_indices(labels: torch.Tensor, max_points: int, seed: int = 0) -> torch.Tensor:
    """At most ``max_points`` indices, drawn uniformly without replacement (seeded), sorted."""
    n = int(labels.shape[0])
    if n <= max_points:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_points].sort().values


def _uint8_batch(dataset: AnyDataset, n: int) -> torch.Tensor:
    """The first ``n`` images of a dataset as one uint8 (n, C, H, W) tensor."""
    if isinstance(dataset, ImageDataset):
        return dataset.images[:n]
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])  # type: ignore[index]


class RunPlots(Callback):
    """Writes the run's figures periodically and at the end (process 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        dataset: AnyDataset,
        every: int = 1,
        embedding: str = "tsne",
        max_points: int = 1500,
        grid_size: int = 32,
    ) -> None:
        folder = RunFolder(run_dir)
        self.image_dir = folder.image_dir
        self.metrics_csv = folder.metrics_file
        self.dataset = dataset
        self.every = every
        self.embedding = embedding
        self.max_points = max_points
        self.grid_size = grid_size
        self.written: dict[str, Path] = {}

    # ---------------------------------------------------------------------------- hooks
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or (
            trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        )
        if (trainer.current_epoch + 1) % self.every == 0 and trainer.is_global_zero and not last:
            self.draw(trainer, pl_module, final=False)  # the last epoch is drawn by on_train_end

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw(trainer, pl_module, final=True)

    # --------------------------------------------------------------------------- drawing
    def draw(self, trainer: L.Trainer, method: L.LightningModule, final: bool) -> dict[str, Path]:
        """Write every figure that applies now; returns {name: path}."""
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush buffered rows so the curves are current
        written: dict[str, Path] = {}
        for name, fn in (
            ("loss_curves", plots.plot_loss_curves),
            ("online_probe", plots.plot_probe_curve),
        ):
            path = fn(self.metrics_csv, self.image_dir / f"{name}.png")
            if path is not None:
                written[name] = path
        if isinstance(method, Method):
            devices = [method.device] if method.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(method.config.seed)
                written.update(self._model_figures(method, final))
        self.written.update(written)
        self._to_tensorboard(trainer, written)
        return written

    def _model_figures(self, method: Method, final: bool) -> dict[str, Path]:
        written: dict[str, Path] = {}
        has_images = len(self.dataset) > 0
        if method.generative and has_images and isinstance(self.dataset, ImageDataset):
            written.update(
                plots.save_generative_grids(method, self.dataset, self.image_dir, self.grid_size)
            )
        if method.has_latents and has_images:
            images = _uint8_batch(self.dataset, 256)
            written["latent_traversals"] = plots.save_latent_traversals(
                method, images, self.image_dir / plots.TRAVERSALS
            )
        if final and self.embedding != "none" and has_images:
            path = self._embedding(method)
            if path is not None:
                written["embedding"] = path
        return written

    def _embedding(self, method: Method) -> Path | None:
        from selfsup.evaluate.features import frozen_features

        dataset = self.dataset
        labels = dataset.labels if isinstance(dataset, ImageDataset) else None
        n = len(dataset)
        if n < 3:
            return None
        idx = subset_indices(
            labels if labels is not None else torch.zeros(n), self.max_points, method.config.seed
        )
        if isinstance(dataset, ImageDataset):
            part: Any = dataset.subset(idx)
        else:
            part = torch.utils.data.Subset(dataset, idx.tolist())  # type: ignore[arg-type]
        feats, labs = frozen_features(method, part, 512)
        names = getattr(dataset, "class_names", None)
        title = (
            f"{method.name}: {self.embedding.upper()} of {len(labs)} "
            f"{getattr(dataset, 'split', '')} representations (dim {feats.shape[1]})"
        )
        return plots.plot_embedding(
            feats.numpy(),
            labs.numpy(),
            self.image_dir / plots.EMBEDDING,
            kind=self.embedding,
            title=title,
            class_names=names,
            seed=method.config.seed,
        )

    @staticmethod
    def _to_tensorboard(trainer: L.Trainer, written: dict[str, Path]) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name, path in written.items():
                array = plots.png_array(path)
                logger.experiment.add_image(
                    f"images/{name}", np.ascontiguousarray(array), trainer.global_step,
                    dataformats="HWC",
                )
            logger.experiment.flush()
