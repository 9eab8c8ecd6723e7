"""AAVAE: Augmentation-Augmented VAE (Falcon et al., arXiv 2107.12329).

Inputs are normalised per channel, x = (u - mean) / std (``augment.normalize``; the dataset's
mean/std come from the data layer, :func:`selfsup.data.preprocess.dataset_stats`). The clean
image x is the dataset's preprocessed image (:meth:`Method.preprocess`; on STL-10 the preset
declares Resize(105) + CenterCrop(96), ``augment.clean_resize``). The encoder sees an augmented
view (``denoising: true``) or the clean image, h = f(x_in); a head Linear(h, h)-BN-ReLU followed
by two bias-free Linear(h, latent) layers gives (mu, logvar) of q(z|x_in) = N(mu, std^2) with
std = e^(logvar/2) + 1e-6. One z = mu + std * eps is decoded to x_hat and scored against the
**clean** normalised image under p(x|z) = N(x_hat, sigma_x^2), sigma_x = e^(log_scale/2) + 1e-6
(``log_scale`` is a log-variance, fixed at 0 unless ``learn_log_scale``). Per sample

    loss_i = kl_coeff * KL(q(z|x_in,i) || N(0, I)) - log p(x_clean,i | z_i),

averaged over the batch (AAVAE: kl_coeff = 0, a denoising auto-encoder with a stochastic
bottleneck). The representation is the encoder's pooled feature h (as in the paper's linear
evaluation) or mu (``representation: mu``).

``clean_pass: true`` (as released, src/vae.py:197-200) first passes the clean image through
encoder and head in train mode without gradients, so BatchNorm's running statistics are updated
by the clean batch and then by the augmented one (momentum m: r <- (1-m)^2 r + (1-m) m s_clean +
m s_aug); that pass also gives the logged training diagnostics KL(q(z|x_in) || q(z|x)) and
cos(z_in, z). ``clean_pass: false`` skips it (running statistics of augmented views only).

Validation diagnostics on clean test images (all means over the batch): the importance-weighted
log p(x) with ``val_samples`` samples and its bits/dim (in the normalised units the model sees),
KL(q(z|x_aug) || q(z|x)) and cos(z_aug, z) for samples z_aug ~ q(z|x_aug), z ~ q(z|x), where x_aug
is one augmentation of x drawn with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.config import check_choices
from selfsup.data.base import DataInfo
from selfsup.data.preprocess import dataset_stats
from selfsup.errors import ConfigError
from selfsup.losses.aavae import (
    STD_EPS,
    aavae_loss,
    bits_per_dim,
    cosine_similarity,
    importance_weighted_log_likelihood,
    kl_between_posteriors,
)
from selfsup.methods import register
from selfsup.methods.base import Method
from selfsup.nets.decoders import AAVAEResNetDecoder
from selfsup.nets.factory import build_decoder, build_encoder, resnet_stem, resolve_kind

ENCODERS = ("auto", "resnet18", "resnet34", "resnet50", "conv", "mlp")
DECODERS = ("auto", "resnet", "conv", "mlp")
REPRESENTATIONS = ("backbone", "mu")

# Decoder paired with each ResNet encoder (paper-AAVAE src/models/decoder.py:256-268).
RESNET_DECODERS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 6, 4, 3)),
    "resnet50": ("bottleneck", (3, 6, 4, 3)),
}


@dataclass
class AAVAEConfig:
    """AAVAE settings (see the module docstring for the objective)."""

    denoising: bool = True
    kl_coeff: float = 0.0
    log_scale: float = 0.0
    learn_log_scale: bool = False
    latent_dim: int = 128
    encoder: str = "auto"
    decoder: str = "auto"
    hidden: list[int] = field(default_factory=lambda: [2000, 500, 500])
    width: int = 32
    representation: str = "backbone"
    val_samples: int = 16
    clean_pass: bool = True

    def validate(self) -> None:
        """Raise ConfigError for out-of-range or unknown values."""
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}.")
        if not self.kl_coeff >= 0:
            raise ConfigError(
                f"model.kl_coeff must be >= 0, got {self.kl_coeff}. AAVAE uses 0 (no KL term); a "
                "positive value adds kl_coeff * KL(q(z|x) || N(0, I)) to the loss."
            )
        if self.val_samples < 1:
            raise ConfigError(
                f"model.val_samples must be >= 1, got {self.val_samples}: it is the number of "
                "importance samples of the validation log-likelihood (16 in the paper)."
            )
        check_choices(
            "aavae",
            {
                "encoder": (self.encoder, ENCODERS),
                "decoder": (self.decoder, DECODERS),
                "representation": (self.representation, REPRESENTATIONS),
            },
        )
        if self.width < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.width and model.hidden sizes must be positive integers.")


class GaussianHead(nn.Module):
    """h -> ReLU(BN(Linear(h, h))) -> (mu, logvar) with two bias-free Linear(h, latent) layers."""

    def __init__(self, feat_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(feat_dim, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True)
        )
        self.mu = nn.Linear(feat_dim, latent_dim, bias=False)
        self.logvar = nn.Linear(feat_dim, latent_dim, bias=False)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        t = self.trunk(h)
        return self.mu(t), self.logvar(t)


@register
class AAVAE(Method):
    """Augmentation-augmented VAE with a ResNet (or small conv / MLP) encoder."""

    name = "aavae"
    config_class = AAVAEConfig
    generative = True

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        """SimCLR augmentations (jitter strength 0.5) and the dataset's normalisation."""
        c = info.image_shape[0]
        mean, std = dataset_stats(info.name, c)
        augment: dict[str, Any] = {
            "crop_scale": [0.08, 1.0],
            "hflip": 0.5,
            "normalize": True,
            "mean": list(mean),
            "std": list(std),
        }
        if c == 3:
            augment.update(jitter=[0.4, 0.4, 0.4, 0.1], jitter_prob=0.8, grayscale=0.2)
        return {"augment": augment}

    def __init__(self, config, info: DataInfo) -> None:  # noqa: ANN001 - RunConfig
        super().__init__(config, info)
        cfg = config.model
        if not config.augment.normalize:
            raise ConfigError(
                "aavae scores reconstructions of mean/std-normalised images, but "
                "augment.normalize is false. Set augment.normalize to true with one mean and std "
                "per channel (the defaults fill in the dataset's values)."
            )
        if cfg.encoder == "auto":
            cfg.encoder = (
                "resnet18"
                if max(info.image_shape[1:]) >= 32
                else resolve_kind("auto", info.image_shape)
            )
        if cfg.decoder == "auto":
            cfg.decoder = "resnet" if cfg.encoder.startswith("resnet") else cfg.encoder
        self.backbone, feat_dim = build_encoder(
            cfg.encoder, info.image_shape, None, cfg.hidden, cfg.width
        )
        self.feature_dim = feat_dim
        self.head = GaussianHead(feat_dim, cfg.latent_dim)
        c, h, _ = info.image_shape
        if cfg.decoder == "resnet":
            dec_feat = feat_dim if feat_dim % 16 == 0 else 512
            blocks, layers = RESNET_DECODERS.get(cfg.encoder, RESNET_DECODERS["resnet18"])
            self.decoder: nn.Module = AAVAEResNetDecoder(
                cfg.latent_dim,
                dec_feat,
                h,
                c,
                blocks=blocks,
                layers=layers,
                stem=resnet_stem(info.image_shape),
            )
        else:
            self.decoder = build_decoder(
                cfg.decoder,
                cfg.latent_dim,
                info.image_shape,
                list(reversed(cfg.hidden)),
                cfg.width,
            )
        self.log_scale = nn.Parameter(
            torch.tensor(float(cfg.log_scale)), requires_grad=bool(cfg.learn_log_scale)
        )
        rep_dim = feat_dim if cfg.representation == "backbone" else cfg.latent_dim
        self.init_online_probe(rep_dim)

    # ------------------------------------------------------------------------------ pieces
    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features h(x)."""
        return self.backbone(x).float()

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|x)."""
        mu, logvar = self.head(self.features(x))
        return mu.float(), logvar.float()

    def encode(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.config.model.representation == "backbone":
            return h
        return self.head(h)[0].float()

    @staticmethod
    def rsample(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + (e^(logvar/2) + 1e-6) * eps."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + (torch.exp(0.5 * logvar) + STD_EPS) * eps

    def to_unit_range(self, x: Tensor) -> Tensor:
        """Undo the normalisation and clamp to [0, 1]: u = clamp(x * std + mean)."""
        return self.augment.preprocessing.to_unit_range(x)

    # --------------------------------------------------------------------------- objective
    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        """Batch means of loss, log_likelihood (of the clean image) and kl; features h(x_in).

        With ``clean_pass`` the clean batch goes through encoder and head first (train mode, no
        gradient), as released, and the diagnostics KL(q(z|x_in) || q(z|x)) and cos(z_in, z) are
        logged too.
        """
        cfg = self.config.model
        x_clean = self.preprocess(images)
        x_in = self.augmented(images) if cfg.denoising else x_clean
        clean = None
        if cfg.clean_pass:
            with torch.no_grad():
                clean = self.posterior(x_clean)
        h = self.features(x_in)
        mu, logvar = self.head(h)
        mu, logvar = mu.float(), logvar.float()
        z = self.rsample(mu, logvar)
        x_hat = self.decoder(z).float()
        terms = aavae_loss(
            x_clean, x_hat, mu, logvar, z, log_scale=self.log_scale, kl_coeff=cfg.kl_coeff
        )
        out = {k: v.mean() for k, v in terms.items()}
        if clean is not None:
            with torch.no_grad():
                z_clean = self.rsample(*clean)
                out["kl_aug_clean"] = kl_between_posteriors(mu, logvar, *clean).mean()
                out["cosine_aug_clean"] = cosine_similarity(z, z_clean).mean()
        feats = h if cfg.representation == "backbone" else mu
        return {**out, "features": feats.detach()}

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> dict[str, Tensor]:
        """IWAE log p(x), bits/dim, KL(q(z|x_aug) || q(z|x)) and cos(z_aug, z) (batch means)."""
        cfg = self.config.model
        gen = torch.Generator().manual_seed(self.config.seed + 12345)
        log_px = importance_weighted_log_likelihood(
            x,
            self.posterior,
            lambda z: self.decoder(z).float(),
            cfg.val_samples,
            self.log_scale.detach(),
            chunk_size=4,
        )
        x_aug = self.augment(self.to_unit_range(x), generator=gen).to(x.device)
        mu, logvar = self.posterior(x)
        mu_a, logvar_a = self.posterior(x_aug)
        z = self.rsample(mu, logvar)
        z_a = self.rsample(mu_a, logvar_a)
        return {
            "log_px": log_px.mean(),
            "bits_per_dim": bits_per_dim(log_px, int(x[0].numel())).mean(),
            "kl_aug_clean": kl_between_posteriors(mu_a, logvar_a, mu, logvar).mean(),
            "cosine_aug_clean": cosine_similarity(z_a, z).mean(),
        }

    # -------------------------------------------------------------------------- generative
    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.to_unit_range(self.decoder(self.posterior(x)[0]).float())

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.config.model.latent_dim, device=self.device)
        return self.to_unit_range(self.decoder(z).float())

    def latent(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.to_unit_range(self.decoder(z).float())
