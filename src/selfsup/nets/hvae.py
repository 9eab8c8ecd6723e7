"""Networks of the hierarchical binary-latent VAE (Flach, Schlesinger, Shekhovtsov, AISTATS 2024).

Layer for layer the networks of the released code (dschles70/symvae-aistats2024), widths
configurable (``c1, c2, c3`` = 32, 64, 128 there):

- :class:`ConvTrunk`: seven convolutions, tanh after each,
  ``28 -> 28 (3x3, pad 1) -> 27 (2x2) -> 13 (3x3, /2) -> 11 (3x3) -> 9 (3x3) -> 4 (3x3, /2)
  -> 1 (4x4)``, giving a ``features``-vector ``h = tanh(conv_7(...))``.
- :class:`SkipMLP`: ``f(z) = L_out(tanh(... tanh(L_1 z))) + W z`` (tanh MLP plus a linear skip
  without bias): the prior logits f01(z0) of p(z1|z0), and the reverse encoder's g10(z1).
- :class:`LadderHeads`: the ladder encoder's logits from ``h``: ``a1 = L(h)`` and
  ``a0 = MLP(h) + W a1`` (tanh MLP, skip from the a1 logits without bias).
- :class:`DeconvDecoder`: ``nz1 x 1 x 1 -> 4 (4x4) -> 9 (3x3, x2) -> 11 -> 13 -> 27 (3x3, x2)
  -> 28 (2x2)`` by six transposed convolutions, then a 3x3 convolution (pad 1) to the output
  channels; tanh (MNIST) or ReLU (Fashion-MNIST) after each but the last.

For other image sizes (``image_size`` != 28) the trunk resizes its input to 28x28 and the decoder
resizes its 28x28 output to the image size (bilinear, no parameters), so the method runs on every
dataset while the 28x28 networks stay exactly the released ones.
"""

from __future__ import annotations

from torch import Tensor, nn

PAPER_SIZE = 28
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _resize(source: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    """Bilinear resize from ``source`` to ``target`` size, the identity when they are equal."""
    if tuple(source) == tuple(target):
        return nn.Identity()
    return nn.Upsample(size=tuple(target), mode="bilinear", align_corners=False)


def _interleave(layers: list[nn.Module], activation: type[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in layers:
        out += [layer, activation()]
    return out


class ConvTrunk(nn.Module):
    """Seven convolutions ``28 -> 28 -> 27 -> 13 -> 11 -> 9 -> 4 -> 1``, tanh after each.

    ``channels = [c1, c2, c3]``: two layers of c1, three of c2, one of c3, then ``features``.
    """

    def __init__(
        self, in_channels: int, channels: list[int], features: int,
        image_size: tuple[int, int] = (PAPER_SIZE, PAPER_SIZE),
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.resize = _resize(image_size, (PAPER_SIZE, PAPER_SIZE))
        self.net = nn.Sequential(*_interleave([
            nn.Conv2d(in_channels, c1, 3, padding=1),  # 28 -> 28
            nn.Conv2d(c1, c1, 2),  # 28 -> 27
            nn.Conv2d(c1, c2, 3, stride=2),  # 27 -> 13
            nn.Conv2d(c2, c2, 3),  # 13 -> 11
            nn.Conv2d(c2, c2, 3),  # 11 -> 9
            nn.Conv2d(c2, c3, 3, stride=2),  # 9 -> 4
            nn.Conv2d(c3, features, 4),  # 4 -> 1
        ], nn.Tanh))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.resize(x)).flatten(1)


def _mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
    """``L_out(tanh(... tanh(L_1 z)))``."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class SkipMLP(nn.Module):
    """``f(z) = L_out(tanh(... tanh(L_1 z))) + W_skip z`` (logits of a factorized Bernoulli)."""

    def __init__(self, n_in: int, hidden: list[int], n_out: int) -> None:
        super().__init__()
        self.mlp = _mlp(n_in, hidden, n_out)
        self.skip = nn.Linear(n_in, n_out, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.mlp(z) + self.skip(z)


class LadderHeads(nn.Module):
    """Ladder encoder logits from trunk features h: ``a1 = L(h)``, ``a0 = MLP(h) + W a1``."""

    def __init__(self, features: int, a0_hidden: list[int], nz0: int, nz1: int) -> None:
        super().__init__()
        self.a1 = nn.Linear(features, nz1)
        self.a0 = _mlp(features, a0_hidden, nz0)
        self.skip = nn.Linear(nz1, nz0, bias=False)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        a1 = self.a1(h)
        return self.a0(h) + self.skip(a1), a1


class DeconvDecoder(nn.Module):
    """``nz1 x 1 x 1 -> 4 -> 9 -> 11 -> 13 -> 27 -> 28`` (transposed convs) ``-> 28`` (3x3 conv).

    ``channels = [c1, c2, c3]``: one layer of c1, three of c2, two of c3; ``activation`` (tanh or
    relu) after each but the last. Outputs per-pixel logits (Bernoulli) or means (Gaussian) of
    shape ``(N, out_channels, H, W)``.
    """

    def __init__(
        self, nz1: int, channels: list[int], out_channels: int,
        image_size: tuple[int, int] = (PAPER_SIZE, PAPER_SIZE), activation: str = "tanh",
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.resize = _resize((PAPER_SIZE, PAPER_SIZE), image_size)
        hidden = _interleave([
            nn.ConvTranspose2d(nz1, c1, 4),  # 1 -> 4
            nn.ConvTranspose2d(c1, c2, 3, stride=2),  # 4 -> 9
            nn.ConvTranspose2d(c2, c2, 3),  # 9 -> 11
            nn.ConvTranspose2d(c2, c2, 3),  # 11 -> 13
            nn.ConvTranspose2d(c2, c3, 3, stride=2),  # 13 -> 27
            nn.ConvTranspose2d(c3, c3, 2),  # 27 -> 28
        ], ACTIVATIONS[activation])
        self.net = nn.Sequential(*hidden, nn.Conv2d(c3, out_channels, 3, padding=1))  # 28 -> 28

    def forward(self, z1: Tensor) -> Tensor:
        return self.resize(self.net(z1[:, :, None, None]))
