"""Networks of the hierarchical binary-latent VAE (Flach, Schlesinger, Shekhovtsov, AISTATS 2024).

- :class:`ConvTrunk`: 28x28 image -> ``features`` vector by strided convolutions down to 1x1,
  tanh after every layer.
- :class:`SkipMLP`: ``f(z) = MLP(z) + W z`` (tanh MLP, e.g. 600-600, plus a linear skip), used for
  the prior logits f01(z0) of p(z1|z0) and, in the reverse order, for g10(z1) of q(z0|z1).
- :class:`DeconvDecoder`: ``nz1 x 1 x 1`` -> transposed convolutions -> ``C x 28 x 28``.

Both are the paper's 28x28 networks. For other image sizes (``image_size`` != 28) the trunk
resizes its input to 28x28 and the decoder resizes its 28x28 output to the image size (bilinear,
no parameters), so the method runs on every dataset while the MNIST networks stay exactly the
paper's.
"""

from __future__ import annotations

from torch import Tensor, nn

PAPER_SIZE = 28


def _resize(source: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    """Bilinear resize from ``source`` to ``target`` size, the identity when they are equal."""
    if tuple(source) == tuple(target):
        return nn.Identity()
    return nn.Upsample(size=tuple(target), mode="bilinear", align_corners=False)


class ConvTrunk(nn.Module):
    """Conv encoder trunk for 28x28 inputs: 28 -> 14 -> 7 -> 3 -> 1, tanh after each layer.

    ``channels`` are the widths of the first three layers; the last layer maps to ``features``.
    """

    def __init__(
        self, in_channels: int, channels: list[int], features: int,
        image_size: tuple[int, int] = (PAPER_SIZE, PAPER_SIZE),
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.resize = _resize(image_size, (PAPER_SIZE, PAPER_SIZE))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1),  # 28 -> 14
            nn.Tanh(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
            nn.Tanh(),
            nn.Conv2d(c2, c3, 3, stride=2),  # 7 -> 3
            nn.Tanh(),
            nn.Conv2d(c3, features, 3),  # 3 -> 1
            nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.resize(x)).flatten(1)


class SkipMLP(nn.Module):
    """``f(z) = L_out(tanh(... tanh(L_1 z))) + W_skip z`` (logits of a factorized Bernoulli)."""

    def __init__(self, n_in: int, hidden: list[int], n_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, n_out))
        self.mlp = nn.Sequential(*layers)
        self.skip = nn.Linear(n_in, n_out, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.mlp(z) + self.skip(z)


class DeconvDecoder(nn.Module):
    """``nz1 x 1 x 1`` -> 3 -> 7 -> 14 -> 28 by transposed convolutions (tanh between layers).

    Outputs per-pixel logits (Bernoulli) or means (Gaussian) of shape ``(N, out_channels, 28, 28)``.
    """

    def __init__(
        self, nz1: int, channels: list[int], out_channels: int,
        image_size: tuple[int, int] = (PAPER_SIZE, PAPER_SIZE),
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.resize = _resize((PAPER_SIZE, PAPER_SIZE), image_size)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz1, c1, 3),  # 1 -> 3
            nn.Tanh(),
            nn.ConvTranspose2d(c1, c2, 3, stride=2),  # 3 -> 7
            nn.Tanh(),
            nn.ConvTranspose2d(c2, c3, 4, stride=2, padding=1),  # 7 -> 14
            nn.Tanh(),
            nn.ConvTranspose2d(c3, out_channels, 4, stride=2, padding=1),  # 14 -> 28
        )

    def forward(self, z1: Tensor) -> Tensor:
        return self.resize(self.net(z1[:, :, None, None]))
