"""VAE / beta-VAE (Kingma & Welling 2014; Higgins et al. 2017).

q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) Bernoulli (logits) or Gaussian with fixed
log-variance ``log_var_x``. Per sample the loss is the beta-weighted negative ELBO

    L(x) = -log p(x | z) + beta * KL(q(z|x) || p(z)),   z = mu + sigma * eps,

averaged over the batch. The representation is mu(x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.losses.vae import reparameterize, vae_loss
from selfsup.methods import register
from selfsup.methods.base import Method
from selfsup.nets.factory import DECODERS, ENCODERS, build_decoder, build_encoder, resolve_kind

LIKELIHOODS = ("auto", "bernoulli", "gaussian")


@dataclass
class VAEConfig:
    """``likelihood: auto`` is Bernoulli for 1-channel images, Gaussian otherwise."""

    latent_dim: int = 10
    beta: float = 1.0
    likelihood: str = "auto"
    log_var_x: float = -4.6
    encoder: str = "auto"
    decoder: str = "auto"
    hidden: list[int] = field(default_factory=lambda: [2000, 500, 500])
    width: int = 32

    def validate(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}.")
        if self.beta < 0:
            raise ConfigError(f"model.beta must be >= 0, got {self.beta}.")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"model.likelihood {self.likelihood!r} is unknown; use {', '.join(LIKELIHOODS)}."
            )
        if self.encoder not in ENCODERS:
            raise ConfigError(f"model.encoder {self.encoder!r}: use one of {', '.join(ENCODERS)}.")
        if self.decoder not in DECODERS:
            raise ConfigError(f"model.decoder {self.decoder!r}: use one of {', '.join(DECODERS)}.")
        if self.width < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.width and model.hidden sizes must be positive.")


class GaussianEncoderDecoder(Method):
    """Shared body of the VAE family: encoder to (mu, logvar), decoder, likelihood."""

    generative = True

    def __init__(self, config, info: DataInfo) -> None:  # noqa: ANN001 - RunConfig
        super().__init__(config, info)
        cfg = config.model
        if cfg.likelihood == "auto":
            cfg.likelihood = "bernoulli" if info.image_shape[0] == 1 else "gaussian"
        cfg.encoder = resolve_kind(cfg.encoder, info.image_shape)
        cfg.decoder = resolve_kind(cfg.decoder, info.image_shape)
        self.encoder, _ = build_encoder(
            cfg.encoder, info.image_shape, 2 * cfg.latent_dim, cfg.hidden, cfg.width
        )
        self.decoder = build_decoder(
            cfg.decoder, cfg.latent_dim, info.image_shape, list(reversed(cfg.hidden)), cfg.width
        )
        self.init_online_probe(cfg.latent_dim)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|x)."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def mean_image(self, decoder_out: Tensor) -> Tensor:
        """E[x|z] in [0, 1] from decoder logits (Bernoulli) or means (Gaussian)."""
        if self.config.model.likelihood == "bernoulli":
            return torch.sigmoid(decoder_out.float())
        return decoder_out.float().clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.mean_image(self.decoder(self.encode(x)))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.config.model.latent_dim, device=self.device)
        return self.mean_image(self.decoder(z))

    def latent(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.mean_image(self.decoder(z))

    def validation_loss(self, x: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        mu, logvar = self.posterior(x)
        terms = vae_loss(
            x, self.decoder(mu).float(), mu, logvar, cfg.likelihood, 1.0, cfg.log_var_x
        )
        return {"neg_elbo_at_mean": terms["loss"].mean()}


@register
class VAE(GaussianEncoderDecoder):
    """beta-VAE trained on (optionally augmented) single views."""

    name = "vae"
    config_class = VAEConfig

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        x = self.augmented(images)
        mu, logvar = self.posterior(x)
        z = reparameterize(mu, logvar)
        terms = vae_loss(
            x, self.decoder(z).float(), mu, logvar, cfg.likelihood, cfg.beta, cfg.log_var_x
        )
        return {**{k: v.mean() for k, v in terms.items()}, "features": mu}
