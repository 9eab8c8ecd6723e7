"""selfsup from Python: train a run, load one, embed images with its frozen encoder, evaluate
and export it. The names here are importable from the package itself (``selfsup.load_run``).

    import selfsup
    run = selfsup.load_run("runs/vae-mnist")      # any device; checkpoints are read safely
    features = run.embed(images)                   # uint8 or float images -> (N, D) on the CPU
    run.encoder                                    # the frozen encoder as an nn.Module
    run.evaluate("knn")                            # a probe, saved in the run's eval/ folder
    run.export("encoder.safetensors")              # weights + JSON for use without selfsup
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.config import RunConfig, load_yaml
from selfsup.errors import ConfigError, DataError
from selfsup.export import FrozenEncoder, export_encoder
from selfsup.methods.base import Method
from selfsup.pipelines import build_config
from selfsup.rundir import RunFolder, eval_name

__all__ = ["Run", "build_config", "load_run", "resume", "train"]


class Run:
    """A trained run: its folder, its configuration, the trained method and its encoder."""

    def __init__(self, path: str | Path, method: Method) -> None:
        self.path = Path(path)
        self.method = method.eval()
        self._encoder: FrozenEncoder | None = None

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}: {self.config.method} on {self.config.data.name}, "
                f"{self.device})")

    @property
    def config(self) -> RunConfig:
        """The run's resolved configuration (``config.yaml``)."""
        return self.method.config

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @property
    def device(self) -> torch.device:
        return self.method.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the encoder takes."""
        return tuple(self.method.info.image_shape)  # type: ignore[return-value]

    @property
    def encoder(self) -> FrozenEncoder:
        """The frozen encoder: images (N, C, H, W), uint8 or float in [0, 1] -> features (N, D).

        The same representation that ``selfsup eval`` probes (preprocessing included).
        """
        if self._encoder is None:
            self._encoder = FrozenEncoder(self.method)
        return self._encoder

    def to(self, device: str | torch.device) -> Run:
        """Move the run's networks to ``device``; returns the run."""
        self.method.to(device)
        return self

    def _as_batch(self, images: Any) -> Tensor:
        x = torch.from_numpy(np.asarray(images)) if not isinstance(images, Tensor) else images
        c, h, w = self.image_shape
        if x.ndim == 3 and tuple(x.shape) in ((c, h, w), (h, w, c)):
            x = x[None]
        elif x.ndim == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
            x = x[:, None]
        if x.ndim == 4 and tuple(x.shape[1:]) != (c, h, w) and tuple(x.shape[1:]) == (h, w, c):
            x = x.permute(0, 3, 1, 2)  # channels-last arrays (e.g. from PIL)
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise DataError(
                f"embed() takes images of shape (N, {c}, {h}, {w}) (or (N, {h}, {w}, {c}), or one "
                f"image), the shape this run was trained on, but got {tuple(x.shape)}. Resize the "
                "images to the run's size first."
            )
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise DataError(
                f"embed() takes uint8 images (0..255) or floats in [0, 1], got {x.dtype}."
            )
        return x

    @torch.no_grad()
    def embed(
        self, images: Any, batch_size: int = 256, device: str | torch.device | None = None
    ) -> Tensor:
        """Features (N, D) float32 on the CPU of ``images``, computed in batches.

        ``images``: a tensor or array (N, C, H, W) or (N, H, W, C), uint8 (0..255) or float in
        [0, 1]. ``device``: where to compute (default: where the run is; the run moves there).
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        x = self._as_batch(images)
        if device is not None:
            self.to(device)
        encoder = self.encoder
        out = [encoder(chunk.to(self.device)).cpu() for chunk in x.split(batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0)

    def evaluate(
        self, probe: str = "linear", data_dir: str | Path | None = None, save: bool = True,
        seed: int = 0, **options: Any,
    ) -> dict[str, Any]:
        """A frozen-encoder probe (linear, mlp, knn, gmm) on the run's dataset, like
        ``selfsup eval``; saved in ``eval/<probe>.json`` when ``save``."""
        from selfsup import pipelines

        if save:
            self.folder.check_eval_writable()
        result = pipelines.evaluate(self.method, probe, data_dir, device=self.device, seed=seed,
                                    probe_options=options)
        if save:
            self.folder.save_evaluation(eval_name(probe, options), result)
        return result

    def export(self, out: str | Path, format: str = "safetensors") -> dict[str, Any]:
        """Write the frozen encoder (``safetensors``, ``torchscript`` or ``onnx``) and its JSON
        description (``out`` with suffix ``.json``); returns the description."""
        return export_encoder(self.method, out, format, run_dir=self.path)


def load_run(
    path: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> Run:
    """The run in folder ``path`` (its ``last.ckpt``, or ``checkpoint``) on ``device``.

    Checkpoints are read without unpickling anything but tensors and plain values, and mapped
    to the CPU first: a run trained on a GPU loads on any machine.
    """
    from selfsup import pipelines

    return Run(path, pipelines.load_run(path, device=device, checkpoint=checkpoint))


def _as_config(config: RunConfig | dict[str, Any] | str | Path) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if not isinstance(config, dict) or not isinstance(config.get("method"), str):
        raise ConfigError(
            "train() takes a RunConfig (selfsup.build_config(...)), the path of a YAML run "
            "config, or a dict with a `method` and config sections, e.g. {'method': 'vae', "
            "'data': {'name': 'digits'}, 'trainer': {'epochs': 2}}."
        )
    content = dict(config)
    method = content.pop("method")
    seed = content.pop("seed", None)
    sections = {k: v for k, v in content.items() if isinstance(v, dict)}
    others = [k for k in content if k not in sections]
    if others:
        raise ConfigError(f"Unknown top-level config key(s) {', '.join(others)}; use method, "
                          "seed and the sections data, augment, optim, trainer, model.")
    dataset = (sections.get("data") or {}).get("name")
    return build_config(method, dataset, flags=sections,
                        sets=[f"seed={int(seed)}"] if seed is not None else None)


def train(config: RunConfig | dict[str, Any] | str | Path, out: str | Path | None = None) -> Run:
    """Train a new run (``out``: its folder, default ``runs/METHOD-DATASET-TIME``); returns it.

    ``config``: from :func:`build_config`, a YAML run config file, or a dict such as
    ``{"method": "vae", "data": {"name": "digits"}, "trainer": {"epochs": 2}}``.
    """
    from selfsup import pipelines

    method, result = pipelines.train(_as_config(config), out)
    return Run(result.run_dir, method)


def resume(path: str | Path, epochs: int | None = None, sets: list[str] | None = None) -> Run:
    """Continue the run in ``path`` (``epochs``/``sets`` as for ``selfsup train --resume``)."""
    from selfsup import pipelines

    method, result = pipelines.resume(path, epochs=epochs, sets=sets)
    return Run(result.run_dir, method)
