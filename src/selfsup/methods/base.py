"""The base every method stands on: the interface the engine and evaluation rely on.

A method file subclasses :class:`Method`, declares ``name`` and its typed ``config_class``, builds
its networks in ``__init__`` and implements two things:

- ``encode(x) -> h``: the representation of preprocessed float images (used by every probe);
- ``training_loss(images) -> {"loss": ..., <named terms>, "features": h}``: scalar terms of the
  objective for a uint8 batch (the method draws its own augmented views with ``self.views``).

Generative methods also implement ``reconstruct`` and ``sample``. Everything else — optimizers and
schedules, per-step seeding, the online linear probe, logging of every term, the non-finite-loss
guard, validation and checkpoint metadata — lives here once, so the engine and evaluation never
special-case a method.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import RunConfig
from selfsup.data.augment import BatchAugment
from selfsup.data.base import DataInfo
from selfsup.errors import NonFiniteLossError
from selfsup.optim import build_optimizer, build_scheduler

_MIX = (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A seed that is a pure function of (run seed, optimizer step, process rank).

    Seeding every step from this makes a run's randomness independent of where it was resumed.
    """
    return (seed * _MIX[0] + step * _MIX[1] + rank * _MIX[2] + 1) % (2**63 - 1)


class Method(L.LightningModule):
    """Base class of all self-supervised methods (a LightningModule)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    generative: ClassVar[bool] = False

    def __init__(self, config: RunConfig, info: DataInfo) -> None:
        super().__init__()
        self.config = config
        self.info = info
        self.augment = BatchAugment(config.augment, info.image_shape)
        self.online_probe: nn.Linear | None = None
        self.step_generator = torch.Generator()
        self.steps_per_epoch = 1
        self.last_checkpoint: str | None = None

    # ----------------------------------------------------------------- to implement per method
    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        """Dataset-dependent defaults (nested dict), applied below presets and user settings."""
        return {}

    def encode(self, x: Tensor) -> Tensor:
        """Representation h of preprocessed float images x (N, C, H, W)."""
        raise NotImplementedError

    def code(self, x: Tensor) -> Tensor | None:
        """Discrete code of preprocessed images x: for each of the L groups of the bottleneck the
        one-hot vector of its argmax symbol (V values), as a float (N, L * V) tensor.

        None for methods without a discrete bottleneck (the default); joint-embedding methods
        with ``encode_method`` softmax, gumbel or vq return their code (used by factor probes).
        """
        return None

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        """Scalar loss terms for a uint8 batch; must contain ``loss``, may contain ``features``."""
        raise NotImplementedError

    def validation_loss(self, x: Tensor) -> dict[str, Tensor] | None:
        """Optional scalar diagnostics on clean preprocessed test images."""
        return None

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions in [0, 1] of preprocessed images (generative methods only)."""
        raise NotImplementedError(f"{self.name} has no decoder")

    def sample(self, n: int) -> Tensor:
        """n images in [0, 1] drawn from the model (generative methods only)."""
        raise NotImplementedError(f"{self.name} has no decoder")

    def latent(self, x: Tensor) -> Tensor:
        """Mean of q(z|x), the decoder's input space (latent-variable models only)."""
        raise NotImplementedError(f"{self.name} has no latent variable model")

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1] decoded from latents z (latent-variable models only)."""
        raise NotImplementedError(f"{self.name} has no decoder")

    @property
    def has_latents(self) -> bool:
        """True when ``latent`` and ``decode`` are implemented (latent traversals possible)."""
        cls = type(self)
        return cls.latent is not Method.latent and cls.decode is not Method.decode

    # ------------------------------------------------------------------------- provided helpers
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 images -> the float input the encoder sees at evaluation (no randomness)."""
        return self.augment.eval_transform(images)

    @torch.no_grad()
    def represent(self, images: Tensor) -> Tensor:
        """Frozen representation of a uint8 batch (what probes and kNN use)."""
        return self.encode(self.preprocess(images))

    def views(self, images: Tensor, n_views: int) -> Tensor:
        """``n_views`` augmented views per sample, sample-major: ``.view(N, n_views, ...)``."""
        return self.augment.views(images, n_views, generator=self.step_generator)

    def augmented(self, images: Tensor) -> Tensor:
        """One augmented view per sample."""
        return self.augment(images, generator=self.step_generator)

    def train_views(self) -> int:
        """How many augmented views per sample ``training_loss`` draws (``views``/``augmented``);
        a streamed image folder crops that many per image in its loader workers."""
        return 1

    def train_uses_clean(self) -> bool:
        """Whether ``training_loss`` also uses the un-augmented images (``preprocess(images)``);
        a streamed image folder then also hands over each image's evaluation view."""
        return False

    def compile_networks(self) -> list[str]:
        """``torch.compile`` each trainable sub-network in place (``trainer.compile``).

        In-place compilation keeps parameter names, so checkpoints stay interchangeable with
        uncompiled runs. Returns the names of the compiled children.
        """
        compiled = []
        for name, module in self.named_children():
            if module is self.online_probe or not any(p.requires_grad for p in module.parameters()):
                continue
            module.compile()
            compiled.append(name)
        return compiled

    def total_steps(self) -> int:
        """T: the optimizer steps of the whole run, ``epochs x steps_per_epoch``, or
        ``trainer.max_steps`` when that stops training earlier. Every schedule (learning rate,
        EMA momentum) spans exactly these steps."""
        total = self.steps_per_epoch * self.config.trainer.epochs
        max_steps = self.config.trainer.max_steps
        return min(total, max_steps) if max_steps > 0 else total

    def init_online_probe(self, feature_dim: int) -> None:
        """Attach a linear classifier trained on detached features (monitoring only)."""
        if self.config.trainer.online_probe and self.info.has_labels:
            self.online_probe = nn.Linear(feature_dim, self.info.num_classes)

    def method_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the method's objective (everything but the online probe)."""
        probe = set() if self.online_probe is None else set(self.online_probe.parameters())
        return [p for p in self.parameters() if p not in probe and p.requires_grad]

    # ------------------------------------------------------------------------ Lightning hooks
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = step_seed(self.config.seed, self.global_step, self.global_rank)
        self.step_generator.manual_seed(seed)
        torch.manual_seed(seed)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        terms = self.training_loss(images)
        features = terms.pop("features", None)
        total = terms["loss"]
        if self.online_probe is not None and features is not None:
            probe_loss, probe_acc = self._probe_terms(features[: labels.shape[0]], labels)
            total = total + probe_loss
            terms["online_probe_loss"] = probe_loss
            terms["online_probe_acc"] = probe_acc
        if self.config.trainer.check_finite:
            self.check_finite(terms)
        self.log_terms(terms, images.shape[0])
        return total

    def log_terms(self, terms: dict[str, Tensor], batch_size: int, prefix: str = "train") -> None:
        """Log every named term (no host sync: Lightning reduces tensors when it writes logs)."""
        for key, value in terms.items():
            self.log(
                f"{prefix}/{key}",
                value.detach(),
                on_step=prefix == "train",
                on_epoch=True,
                prog_bar=key == "loss",
                batch_size=batch_size,
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        x = self.preprocess(images)
        n = images.shape[0]
        if self.online_probe is not None:
            logits = self.online_probe(self.encode(x).float())
            acc = (logits.argmax(1) == labels).float().mean()
            self.log("val/online_probe_acc", acc, on_epoch=True, prog_bar=True, batch_size=n)
        terms = self.validation_loss(x)
        for key, value in (terms or {}).items():
            self.log(f"val/{key}", value, on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        opt_cfg = self.config.optim
        trained = nn.ParameterList(self.method_parameters())  # a view; the probe gets its own group
        optimizer = build_optimizer(trained, opt_cfg, self.config.data.batch_size)
        if self.online_probe is not None:
            optimizer.add_param_group(
                {
                    "params": list(self.online_probe.parameters()),
                    "lr": self.config.trainer.online_probe_lr,
                    "weight_decay": 0.0,
                    "lars_exclude": True,
                }
            )
        scheduler = build_scheduler(
            optimizer, opt_cfg, self.steps_per_epoch, self.config.trainer.epochs,
            total_steps=self.total_steps(),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from selfsup import __version__

        checkpoint["selfsup"] = {
            "version": __version__,
            "method": self.name,
            "config": self.config.to_dict(),
            "data_info": self.info.to_dict(),
        }

    # ------------------------------------------------------------------------------ internals
    def _probe_terms(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy over the labeled rows (label -1 = unlabeled), no host sync."""
        assert self.online_probe is not None
        logits = self.online_probe(features.detach().float())
        labeled = labels >= 0
        count = labeled.sum().clamp(min=1)
        ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        loss = (ce * labeled).sum() / count
        acc = ((logits.argmax(1) == labels) & labeled).sum() / count
        return loss, acc

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
        last = self.last_checkpoint or "none yet (no checkpoint had been written before this step)"
        raise NonFiniteLossError(
            f"Training stopped at step {self.global_step} (epoch {self.current_epoch}) because the "
            f"loss term(s) {', '.join(bad)} became NaN or infinite; no update was made with them. "
            f"The last good checkpoint is {last}. Lower the learning rate (--set optim.lr=...), "
            "enable gradient clipping (--set trainer.gradient_clip=1.0) or train in 32-bit "
            "precision, then continue with `selfsup train --resume RUN_DIR` or start a new run."
        )
