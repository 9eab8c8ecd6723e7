"""SimVAE (Bizeul et al., arXiv 2402.01399) and its augmented-VAE baseline.

Each training sample i gets J = ``n_views`` augmented views x_ij (sample-major rows
[s0v0, s0v1, ..., s1v0, ...]). Every view is encoded to q(z|x_ij) = N(mu_ij, diag e^logvar_ij)
and one z_ij is drawn by reparameterisation. With ``prior: simvae`` the views of a sample share a
content latent y_i: z_ij ~ N(y_i, var_z_y I), y_i ~ p(y), and y_i is replaced by the view mean
zbar_i (as in the released code). Per sample (see :func:`selfsup.losses.simvae.simvae_loss`):

    loss_i = sum_j -log p(x_ij | z_ij) - w sum_j sum_d logvar_ijd
             - sum_d [-1/2 sum_j (z_ijd - zbar_id)^2 / var_z_y + log p(zbar_id)],

with w = 1/2 (``entropy_weight: paper``, the Gaussian entropy) or pi (``released``: the released
code computes 0.5 * sum(2 * pi * logvar), most likely a typo). ``prior: standard`` instead puts
N(0, I) on every view (the augmented-VAE baseline, released ``sup_type 0``):
-log p(z_ij) = 1/2 sum_d (z_ijd^2 - 1) (single-sample, ``kl_estimator: sampled``) or its analytic
expectation (``analytic``).

Reconstruction (released-code convention, constants dropped): Bernoulli: sum BCE(logits, x)
(optionally divided by e^log_var_x, ``bce_scaled_by_var``, as the released code does); Gaussian:
1/2 sum (x - sigmoid(dec(z)))^2 / e^log_var_x, i.e. the decoder mean is sigmoid(dec(z)) as in the
released code. Every term is summed over a sample's J views, pixels and latent dimensions, then
summed over the samples of the batch (``batch_reduction: sum``, as released and in every preset)
or averaged (``mean``, the dataclass default). The two differ by the factor N in the gradient,
which Adam undoes except through its eps (1e-4 in the presets, not negligible against gradients
N times smaller). ``data.batch_size`` counts samples: a batch of
64 samples gives 64 * J images per step (the released "batch 128" is 64 samples x 2 views).
The representation is mu(x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from selfsup.config import check_choices
from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.losses.simvae import (
    ENTROPY_WEIGHTS,
    KL_ESTIMATORS,
    P_Y_PRIORS,
    augmented_vae_loss,
    simvae_loss,
    view_reconstruction,
)
from selfsup.losses.vae import gaussian_kl_standard, reparameterize
from selfsup.methods import register
from selfsup.methods.vae import LIKELIHOODS, GaussianEncoderDecoder
from selfsup.nets.factory import DECODERS, ENCODERS

PRIORS = ("simvae", "standard")
BATCH_REDUCTIONS = ("mean", "sum")


@dataclass
class SimVAEConfig:
    """SimVAE settings; ``likelihood: auto`` is Bernoulli for 1-channel images, else Gaussian.

    ``entropy_weight``: ``paper`` (1/2, the correct Gaussian entropy weight) or ``released``
    (pi, what the released code computes). ``prior``: ``simvae`` (shared content latent) or
    ``standard`` (N(0, I) per view: the augmented-VAE baseline). ``batch_reduction``: ``sum``
    (as released) or ``mean`` of the per-sample terms over the batch.
    """

    n_views: int = 2
    var_z_y: float = 0.15
    log_var_x: float = -4.6
    likelihood: str = "auto"
    p_y_prior: str = "gaussian"
    entropy_weight: str = "paper"
    prior: str = "simvae"
    kl_estimator: str = "sampled"
    bce_scaled_by_var: bool = False
    batch_reduction: str = "mean"
    latent_dim: int = 10
    encoder: str = "auto"
    decoder: str = "auto"
    hidden: list[int] = field(default_factory=lambda: [2000, 500, 500])
    width: int = 32

    def validate(self) -> None:
        """Raise ConfigError for out-of-range or unknown values."""
        if isinstance(self.n_views, bool) or self.n_views < 2:
            raise ConfigError(
                f"model.n_views must be an integer >= 2, got {self.n_views!r}. SimVAE groups "
                "several augmented views of each sample under one content latent, so it needs at "
                "least two views per sample; for a single-view model train the `vae` method."
            )
        if not self.var_z_y > 0:
            raise ConfigError(
                f"model.var_z_y must be > 0, got {self.var_z_y}: it is the variance of each "
                "view's latent around its sample's content latent (0.15 in the paper)."
            )
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}.")
        choices = {
            "likelihood": (self.likelihood, LIKELIHOODS),
            "p_y_prior": (self.p_y_prior, P_Y_PRIORS),
            "entropy_weight": (self.entropy_weight, tuple(ENTROPY_WEIGHTS)),
            "prior": (self.prior, PRIORS),
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
            "batch_reduction": (self.batch_reduction, BATCH_REDUCTIONS),
            "encoder": (self.encoder, ENCODERS),
            "decoder": (self.decoder, DECODERS),
        }
        check_choices("simvae", choices)
        if self.width < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.width and model.hidden sizes must be positive integers.")


@register
class SimVAE(GaussianEncoderDecoder):
    """SimVAE (``prior: simvae``) or the augmented VAE baseline (``prior: standard``)."""

    name = "simvae"
    config_class = SimVAEConfig

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        """The released augmentations: random resized crop (scale 0.4 grey / 0.6 colour), vflip,
        and for colour images ColorJitter(0.8, 0.8, 0.8, 0.2) always applied, before the crop
        (the CIFAR-10 preset also resizes to 256 px first, as released)."""
        augment: dict[str, Any] = {"crop_ratio": [0.75, 1.3], "vflip": 0.5}
        if info.image_shape[0] == 1:
            augment["crop_scale"] = [0.4, 1.0]
        else:
            augment.update(
                crop_scale=[0.6, 1.0], jitter=[0.8, 0.8, 0.8, 0.2], jitter_prob=1.0,
                jitter_first=True,
            )
        return {"augment": augment}

    def decoder_output(self, z: Tensor) -> Tensor:
        """Bernoulli: logits dec(z); Gaussian: the mean sigmoid(dec(z)) (released code)."""
        out = self.decoder(z).float()
        return out if self.config.model.likelihood == "bernoulli" else torch.sigmoid(out)

    def mean_image(self, decoder_out: Tensor) -> Tensor:
        """E[x|z] in [0, 1] from raw decoder output: sigmoid for both likelihoods."""
        return torch.sigmoid(decoder_out.float())

    def objective(self, x: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
        """Per-sample terms (shape (N,)) of the configured objective for sample-major views x."""
        cfg = self.config.model
        common = {
            "likelihood": cfg.likelihood,
            "log_var_x": cfg.log_var_x,
            "entropy_weight": cfg.entropy_weight,
            "bce_scaled_by_var": cfg.bce_scaled_by_var,
        }
        out = self.decoder_output(z)
        if cfg.prior == "simvae":
            return simvae_loss(
                x,
                out,
                z,
                mu,
                logvar,
                cfg.n_views,
                var_z_y=cfg.var_z_y,
                p_y_prior=cfg.p_y_prior,
                **common,
            )
        return augmented_vae_loss(
            x, out, z, mu, logvar, cfg.n_views, kl_estimator=cfg.kl_estimator, **common
        )

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        """Sum (or mean) over samples of the per-sample terms; features = mu of each sample's
        first view."""
        j = self.config.model.n_views
        x = self.views(images, j)
        mu, logvar = self.posterior(x)
        z = reparameterize(mu, logvar)
        terms = self.objective(x, z, mu, logvar)
        features = mu.detach().view(images.shape[0], j, -1)[:, 0]
        reduce = torch.sum if self.config.model.batch_reduction == "sum" else torch.mean
        return {**{k: reduce(v) for k, v in terms.items()}, "features": features}

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> dict[str, Tensor]:
        """Reconstruction at z = mu (training convention) and KL(q(z|x) || N(0, I)), means."""
        cfg = self.config.model
        mu, logvar = self.posterior(x)
        rec = view_reconstruction(
            x, self.decoder_output(mu), cfg.likelihood, cfg.log_var_x, cfg.bce_scaled_by_var
        )
        return {"reconstruction_at_mean": rec.mean(), "kl": gaussian_kl_standard(mu, logvar).mean()}
