"""Fully connected encoder / decoder (the SimVAE MNIST / Fashion-MNIST architecture).

Encoder: flatten (C*H*W) -> [Linear -> ReLU] per hidden width -> Linear(out_dim).
Decoder: z -> [Linear -> ReLU] per hidden width -> Linear(C*H*W) -> reshape (C, H, W), no output
activation (logits for a Bernoulli likelihood, means for a Gaussian one).
For a VAE the encoder's ``out_dim`` is 2 * latent_dim (mean and log-variance, e.g. 2 * 10 for
SimVAE on MNIST); splitting is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a (C, H, W) shape of positive ints and return it as a tuple."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ConfigError(
            f"image_shape must be three integers (channels, height, width), got {image_shape!r}."
        )
    if min(shape) < 1:
        raise ConfigError(f"image_shape entries must be positive, got {image_shape!r}.")
    return shape  # type: ignore[return-value]


def check_widths(widths: Sequence[int], name: str) -> list[int]:
    """Validate a list of positive layer widths."""
    out = list(widths)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in out):
        raise ConfigError(f"{name} must be a list of positive integers, got {widths!r}.")
    return out


def _mlp(in_dim: int, hidden: list[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    return nn.Sequential(*layers), in_dim


class MLPEncoder(nn.Module):
    """x (N, C, H, W) -> flatten -> Linear-ReLU blocks -> Linear(out_dim): (N, out_dim).

    With ``out_dim=None`` the final Linear is omitted and the forward returns the last hidden
    activations, of size ``feature_dim`` (a backbone for discriminative methods).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden: Sequence[int] = (2000, 500, 500),
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        hidden_list = check_widths(hidden, "hidden")
        c, h, w = self.image_shape
        self.body, feat = _mlp(c * h * w, hidden_list)
        self.feature_dim = feat
        if out_dim is None:
            self.head: nn.Module = nn.Identity()
            self.out_dim = feat
        else:
            if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
                raise ConfigError(f"out_dim must be a positive integer or None, got {out_dim!r}.")
            self.head = nn.Linear(feat, out_dim)
            self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, out_dim)."""
        return self.head(self.body(torch.flatten(x, 1)))


class MLPDecoder(nn.Module):
    """z (N, latent_dim) -> Linear-ReLU blocks -> Linear(C*H*W) -> (N, C, H, W), no activation."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int] = (500, 500, 2000),
        *,
        image_shape: Sequence[int],
    ) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}.")
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        hidden_list = check_widths(hidden, "hidden")
        c, h, w = self.image_shape
        self.body, feat = _mlp(latent_dim, hidden_list)
        self.out = nn.Linear(feat, c * h * w)

    def forward(self, z: Tensor) -> Tensor:
        """Return (N, C, H, W) logits / means."""
        return self.out(self.body(z)).view(z.shape[0], *self.image_shape)
