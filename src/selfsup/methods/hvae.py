"""Hierarchical VAE with binary latents, ELBO or symmetric equilibrium learning.

Flach, Schlesinger, Shekhovtsov, "Symmetric Equilibrium Learning of VAEs" (AISTATS 2024).
Model ``p(z0) p(z1|z0) p(x|z1)`` with ``z0 in {0,1}^nz0`` (uniform prior), ``z1 in {0,1}^nz1``,
``p(z1|z0) = Bern(s(f01(z0)))`` (f01: tanh MLP + linear skip), ``p(x|z1)`` Bernoulli or Gaussian
with one learned log-sigma, decoder by transposed convolutions from ``nz1 x 1 x 1``.
Encoder orders (:mod:`selfsup.losses.hvae`): ``ladder`` ``q(z0|x) q(z1|z0,x)`` sharing f01, or
``reverse`` ``q(z1|x) q(z0|z1)`` (wake-sleep order).

Objectives:

- ``elbo``: one Adam optimizer on ``-ELBO`` with ZGR binary samples (automatic optimization);
- ``symmetric``: two players with their own Adam optimizers (manual optimization). Each iteration
  the decoder takes a step on ``-log p(x, z)`` with ``z ~ q(z|x)`` for a data batch, and the
  encoder a step on ``-log q(z|x)`` with ``(z, x) ~ p``. In the symmetric objective Lightning's
  ``global_step`` counts both optimizer steps, i.e. two per iteration (``model.iterations`` sets
  ``trainer.max_steps`` accordingly).

Sampling: :meth:`HVAE.sample` (random codes from the prior) and :meth:`HVAE.sample_limiting`
(the limiting distribution of the chain ``x -> z ~ q(z|x) -> x ~ p(x|z)``). Images are the means
``E[x|z1]`` of the last decoder call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.config import check_choices
from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.losses import hvae as L
from selfsup.methods import register
from selfsup.methods.base import Method
from selfsup.nets.hvae import ConvTrunk, DeconvDecoder, SkipMLP
from selfsup.optim import build_optimizer, build_scheduler

ORDERS = ("ladder", "reverse")
OBJECTIVES = ("elbo", "symmetric")
LIKELIHOODS = ("auto", "bernoulli", "gaussian")
EPOCHS_FOR_ITERATIONS = 1_000_000


@dataclass
class HVAEConfig:
    """Hierarchical binary VAE settings (defaults: the paper's MNIST model).

    Binarization is the dataset's preprocessing, ``augment.binarize`` (threshold t: pixels
    ``x > t`` become 1), applied by the data layer to training and evaluation images alike;
    ``flip_prob``: per-step probability of flipping each binary training pixel;
    ``noise_std``: Gaussian noise added to training pixels; ``likelihood: auto`` is Bernoulli when
    binarizing, Gaussian otherwise; ``lr_decoder``/``lr_encoder``: Adam learning rates of the two
    players of the symmetric objective (0: ``optim.lr``); ``iterations`` > 0 trains that many
    iterations (sets ``trainer.max_steps``); ``chain_steps``: default length of the Markov chain
    of :meth:`HVAE.sample_limiting`.
    """

    order: str = "ladder"
    objective: str = "symmetric"
    nz0: int = 30
    nz1: int = 100
    features: int = 600
    enc_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    dec_channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    f01_hidden: list[int] = field(default_factory=lambda: [600, 600])
    g10_hidden: list[int] = field(default_factory=lambda: [600, 600])
    likelihood: str = "auto"
    log_sigma_init: float = -2.0
    flip_prob: float = 0.0
    noise_std: float = 0.0
    lr_decoder: float = 0.0
    lr_encoder: float = 0.0
    iterations: int = 0
    chain_steps: int = 1000

    def validate(self) -> None:
        check_choices(
            "hvae",
            {
                "order": (self.order, ORDERS),
                "objective": (self.objective, OBJECTIVES),
                "likelihood": (self.likelihood, LIKELIHOODS),
            },
        )
        if self.nz0 < 1 or self.nz1 < 1 or self.features < 1:
            raise ConfigError("model.nz0, model.nz1 and model.features must be >= 1.")
        if len(self.enc_channels) != 3 or len(self.dec_channels) != 3:
            raise ConfigError(
                "model.enc_channels and model.dec_channels must list three widths, e.g. "
                "[32, 64, 128] and [128, 64, 32]."
            )
        if any(c < 1 for c in [*self.enc_channels, *self.dec_channels, *self.f01_hidden,
                               *self.g10_hidden]):
            raise ConfigError("model channel and hidden sizes must be positive.")
        if not 0.0 <= self.flip_prob <= 0.5:
            raise ConfigError(f"model.flip_prob must be in [0, 0.5], got {self.flip_prob}.")
        if self.noise_std < 0:
            raise ConfigError(f"model.noise_std must be >= 0, got {self.noise_std}.")
        if self.lr_decoder < 0 or self.lr_encoder < 0:
            raise ConfigError("model.lr_decoder and model.lr_encoder must be >= 0 (0: optim.lr).")
        if self.iterations < 0 or self.chain_steps < 0:
            raise ConfigError("model.iterations and model.chain_steps must be >= 0.")


class HVAEDecoder(nn.Module):
    """The generative player p: f01 (prior of z1 given z0), the image decoder, log sigma."""

    def __init__(self, cfg: HVAEConfig, out_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.f01 = SkipMLP(cfg.nz0, list(cfg.f01_hidden), cfg.nz1)
        self.net = DeconvDecoder(cfg.nz1, list(cfg.dec_channels), out_channels, image_size)
        self.log_sigma = nn.Parameter(torch.tensor(float(cfg.log_sigma_init)))


class HVAEEncoder(nn.Module):
    """The inference player q: conv trunk and heads (a0, a1 ladder; b1 and g10 reverse)."""

    def __init__(self, cfg: HVAEConfig, in_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.trunk = ConvTrunk(in_channels, list(cfg.enc_channels), cfg.features, image_size)
        if cfg.order == "ladder":
            self.head0 = nn.Linear(cfg.features, cfg.nz0)
            self.head1 = nn.Linear(cfg.features, cfg.nz1)
        else:
            self.head1 = nn.Linear(cfg.features, cfg.nz1)
            self.g10 = SkipMLP(cfg.nz1, list(cfg.g10_hidden), cfg.nz0)


@register
class HVAE(Method):
    """Hierarchical binary-latent VAE (``selfsup train hvae --objective elbo|symmetric``)."""

    name = "hvae"
    config_class = HVAEConfig
    generative = True

    def __init__(self, config, info: DataInfo) -> None:  # noqa: ANN001 - RunConfig
        super().__init__(config, info)
        cfg: HVAEConfig = config.model
        channels, height, width = info.image_shape
        if cfg.likelihood == "auto":
            cfg.likelihood = "bernoulli" if config.augment.binarize is not None else "gaussian"
        if cfg.objective == "symmetric" and config.trainer.gradient_clip:
            raise ConfigError(
                "trainer.gradient_clip is not supported with model.objective=symmetric (each "
                "player takes its own manual optimizer step); set it to 0."
            )
        if cfg.iterations:
            per_iteration = 2 if cfg.objective == "symmetric" else 1
            config.trainer.max_steps = cfg.iterations * per_iteration
            config.trainer.epochs = max(config.trainer.epochs, EPOCHS_FOR_ITERATIONS)
        self.encoder = HVAEEncoder(cfg, channels, (height, width))
        self.decoder = HVAEDecoder(cfg, channels, (height, width))
        self.automatic_optimization = cfg.objective == "elbo"

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        return {
            "data": {"batch_size": 1024},
            "optim": {"name": "adam", "lr": 1e-4, "schedule": "constant"},
            "trainer": {"online_probe": False, "val_every": 0},
        }

    # ------------------------------------------------------------------------------ pieces
    @property
    def cfg(self) -> HVAEConfig:
        return self.config.model

    def f01(self, z0: Tensor) -> Tensor:
        """Logits of p(z1|z0)."""
        return self.decoder.f01(z0).float()

    def decode(self, z1: Tensor) -> Tensor:
        """Logits (Bernoulli) or means (Gaussian) of p(x|z1)."""
        return self.decoder.net(z1).float()

    @property
    def log_sigma(self) -> Tensor:
        return self.decoder.log_sigma

    def heads(self, x: Tensor) -> tuple[Tensor, ...]:
        """Ladder: (a0, a1); reverse: (b1,)."""
        h = self.encoder.trunk(x)
        if self.cfg.order == "ladder":
            return self.encoder.head0(h).float(), self.encoder.head1(h).float()
        return (self.encoder.head1(h).float(),)

    def g10(self, z1: Tensor) -> Tensor:
        """Logits of the reverse encoder's q(z0|z1)."""
        return self.encoder.g10(z1).float()

    def training_input(self, images: Tensor) -> Tensor:
        """Training images (binarized by the data layer where declared) with random pixel flips,
        or with Gaussian noise."""
        x = self.augmented(images)
        cfg = self.cfg
        if self.config.augment.binarize is not None:
            if cfg.flip_prob > 0:
                flip = (torch.rand(x.shape, device=x.device) < cfg.flip_prob).to(x.dtype)
                x = x + flip - 2 * x * flip
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(x.shape, device=x.device)
        return x

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_posterior(
        self, x: Tensor, heads: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Hard samples (z0, z1) ~ q(z|x) (``heads``: precomputed :meth:`heads` of x)."""
        heads = self.heads(x) if heads is None else heads
        if self.cfg.order == "ladder":
            a0, a1 = heads
            z0 = L.bernoulli_sample(a0)
            z1 = L.bernoulli_sample(self.f01(z0) + a1)
        else:
            (b1,) = heads
            z1 = L.bernoulli_sample(b1)
            z0 = L.bernoulli_sample(self.g10(z1))
        return z0, z1

    @torch.no_grad()
    def sample_prior(self, n: int) -> tuple[Tensor, Tensor]:
        """(z0, z1) ~ p(z0) p(z1|z0)."""
        z0 = (torch.rand(n, self.cfg.nz0, device=self.device) < 0.5).float()
        z1 = L.bernoulli_sample(self.f01(z0))
        return z0, z1

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n images E[x|z1] for random codes (z0, z1) ~ p(z)."""
        _, z1 = self.sample_prior(n)
        return L.mean_x(self.decode(z1), self.cfg.likelihood)

    @torch.no_grad()
    def sample_limiting(self, n: int, steps: int | None = None, x: Tensor | None = None) -> Tensor:
        """n images from the limiting distribution of ``x -> z ~ q(z|x) -> x ~ p(x|z)``.

        ``n`` chains run in parallel for ``steps`` transitions from noise (uniform binary pixels
        or uniform grey levels) or from ``x``; returns E[x|z1] of the last transition.
        """
        steps = self.cfg.chain_steps if steps is None else steps
        shape = (n, *self.info.image_shape)
        if x is None:
            x = torch.rand(shape, device=self.device)
            if self.cfg.likelihood == "bernoulli":
                x = (x < 0.5).float()
        out = self.decode(self.sample_posterior(x)[1])
        for _ in range(max(steps, 1) - 1):
            x = L.sample_x(out, self.cfg.likelihood, self.log_sigma)
            out = self.decode(self.sample_posterior(x)[1])
        return L.mean_x(out, self.cfg.likelihood)

    @torch.no_grad()
    def sample_joint(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """(z0, z1, x) ~ p."""
        z0, z1 = self.sample_prior(n)
        x = L.sample_x(self.decode(z1), self.cfg.likelihood, self.log_sigma)
        return z0, z1, x

    # ------------------------------------------------------------------------ representation
    def posterior_modes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior probabilities (p0, p1) and z1's mode, following each conditional's mode."""
        if self.cfg.order == "ladder":
            a0, a1 = self.heads(x)
            p0 = torch.sigmoid(a0)
            p1 = torch.sigmoid(self.f01((p0 > 0.5).float()) + a1)
        else:
            (b1,) = self.heads(x)
            p1 = torch.sigmoid(b1)
            p0 = torch.sigmoid(self.g10((p1 > 0.5).float()))
        return p0, p1, (p1 > 0.5).float()

    def encode(self, x: Tensor) -> Tensor:
        """Representation: the posterior probabilities [q(z0=1|x), q(z1=1|...)]."""
        p0, p1, _ = self.posterior_modes(x)
        return torch.cat([p0, p1], dim=1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return L.mean_x(self.decode(self.posterior_modes(x)[2]), self.cfg.likelihood)

    # -------------------------------------------------------------------------- objectives
    def elbo_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Batch means of -ELBO and its parts (ZGR samples)."""
        cfg = self.cfg
        if cfg.order == "ladder":
            a0, a1 = self.heads(x)
            t = L.ladder_elbo_terms(x, a0, a1, self.f01, self.decode, cfg.likelihood,
                                    self.log_sigma)
            mi = {"mi_z0": L.mutual_information(a0.detach())}
        else:
            (b1,) = self.heads(x)
            t = L.reverse_elbo_terms(x, b1, self.g10, self.f01, self.decode, cfg.likelihood,
                                     self.log_sigma)
            mi = {"mi_z1": L.mutual_information(b1.detach())}
        terms = {"loss": -t["elbo"].mean()}
        terms.update({k: v.mean() for k, v in t.items() if k != "elbo"})
        terms.update(mi)
        return terms

    def symmetric_terms(self, x: Tensor) -> dict[str, Tensor]:
        """The two players' losses: ``loss_decoder`` (z ~ q) and ``loss_encoder`` ((z, x) ~ p)."""
        cfg = self.cfg
        with torch.no_grad():
            data_heads = self.heads(x)
        z0, z1 = self.sample_posterior(x, data_heads)
        mi_name = "mi_z0" if cfg.order == "ladder" else "mi_z1"
        mi = {mi_name: L.mutual_information(data_heads[0])}
        loss_p = L.decoder_ml_loss(x, z0, z1, self.f01, self.decode, cfg.likelihood,
                                   self.log_sigma)
        zs0, zs1, xs = self.sample_joint(x.shape[0])
        if cfg.order == "ladder":
            a0, a1 = self.heads(xs)
            with torch.no_grad():
                prior1 = self.f01(zs0)
            loss_q = L.ladder_encoder_ml_loss(zs0, zs1, a0, a1, prior1)
        else:
            (b1,) = self.heads(xs)
            loss_q = L.reverse_encoder_ml_loss(zs0, zs1, b1, self.g10)
        return {"loss": loss_p + loss_q, "loss_decoder": loss_p, "loss_encoder": loss_q, **mi}

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        return self.elbo_terms(self.training_input(images))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        images, _ = batch
        terms = self.symmetric_terms(self.training_input(images))
        if self.config.trainer.check_finite:
            self.check_finite(terms)  # before either player moves
        opt_p, opt_q = self.optimizers()
        for opt, loss in ((opt_p, terms["loss_decoder"]), (opt_q, terms["loss_encoder"])):
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.log_terms(terms, images.shape[0])
        return None

    def configure_optimizers(self) -> Any:
        if self.automatic_optimization:
            return super().configure_optimizers()
        cfg, opt_cfg = self.cfg, self.config.optim
        batch = self.config.data.batch_size
        optimizers, schedulers = [], []
        for module, lr in ((self.decoder, cfg.lr_decoder), (self.encoder, cfg.lr_encoder)):
            player_cfg = dataclasses.replace(opt_cfg, lr=lr or opt_cfg.lr)
            optimizer = build_optimizer(module, player_cfg, batch)
            optimizers.append(optimizer)
            schedulers.append(
                build_scheduler(optimizer, player_cfg, self.steps_per_epoch,
                                self.config.trainer.epochs)
            )
        return optimizers, schedulers
