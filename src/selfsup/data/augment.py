"""Batched, on-device image augmentation with independent random parameters per sample.

:class:`BatchAugment` applies, in SimCLR order, to a whole batch ``(N, C, H, W)`` at once:

0. optionally (``pre_resize``) resize every image to ``pre_resize`` x ``pre_resize`` first
   (torchvision ``Resize`` in front of the pipeline, as SimVAE's CIFAR-10 loader does), and
   optionally (``jitter_first``) colour-jitter before the geometry (step 2 moves here);
1. geometry: random resized crop -> horizontal flip -> vertical flip -> random affine (rotation +
   scale about the centre), all folded into ONE per-sample affine sampling grid (with
   ``pre_resize``: crop, resize with antialiasing and flips as one pair of per-sample resampling
   matrices, see :func:`selfsup.data.preprocess.resize_weights`);
2. colour jitter (brightness, contrast, saturation, hue in a per-sample random order), with
   probability ``jitter_prob``;
3. random grayscale;
4. Gaussian blur with a per-sample sigma;
5. solarization (threshold 0.5);
6. the dataset's preprocessing (binarization, normalization): :class:`selfsup.data.preprocess.
   Preprocess`, the same function that prepares every evaluation input (:meth:`BatchAugment.
   eval_transform`).

All random parameters are drawn on the CPU from a ``torch.Generator`` (:meth:`BatchAugment.
sample_params`), so a seed gives the same parameters whatever device the images live on;
:meth:`BatchAugment.apply` is deterministic given the parameters. Formulas follow torchvision
(``transforms.v2``) so that, for fixed parameters, results agree with the per-image torchvision
transforms up to floating point (and, for a crop combined with a rotation, interpolation) error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.preprocess import (
    Preprocess,
    channel_stats,
    resize_weights,
    resolve_normalization,
)
from selfsup.errors import ConfigError, DataError


def to_device(t: Tensor, like: Tensor) -> Tensor:
    """A small CPU tensor (augmentation parameters) on ``like``'s device in ``like``'s dtype
    (bool and integer tensors keep theirs), with no host-device synchronization: on a GPU the copy
    goes through pinned memory and does not block (a copy from ordinary pageable memory makes
    the host wait for every kernel already queued)."""
    if t.is_floating_point():
        t = t.to(like.dtype)
    if like.device.type != "cuda" or t.device == like.device:
        return t.to(like.device)
    return t.pin_memory().to(like.device, non_blocking=True)

__all__ = [
    "AugmentConfig",
    "BatchAugment",
    "channel_stats",
    "resolve_normalization",
    "to_float",
]

# torchvision's luma weights (ITU-R 601-2 with torchvision's rounding of the red weight).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
_INTERPOLATIONS = ("bilinear", "nearest", "nearest-legacy")
_MAX_CROP_TRIES = 10


@dataclass
class AugmentConfig:
    """Augmentation settings; the defaults are the identity (no augmentation).

    Attributes:
        crop_scale: range ``[a, b]`` of the crop area as a fraction of the image area.
        crop_ratio: range of the crop aspect ratio ``w / h`` (sampled uniformly in log space).
        crop_prob: probability that the random resized crop is applied (else the full image).
        hflip, vflip: probabilities of a horizontal / vertical flip.
        jitter: colour jitter strengths ``[brightness, contrast, saturation, hue]`` as in
            torchvision ``ColorJitter``: factors uniform in ``[max(0, 1 - s), 1 + s]``, hue shift
            uniform in ``[-h, h]`` (fraction of a full turn).
        jitter_prob: probability that colour jitter is applied to a sample.
        grayscale: probability of converting to grayscale (channel count is kept).
        blur_prob: probability of a Gaussian blur; ``blur_sigma`` is the sigma range and
            ``blur_kernel`` the odd kernel size (0: ``int(0.1 * height)`` rounded up to odd, >= 3).
        solarize_prob: probability of solarization ``x -> 1 - x`` where ``x >= 0.5``.
        affine_degrees: rotation uniform in ``[-d, d]`` degrees; ``affine_scale`` the zoom range.
        interpolation: ``"bilinear"``, ``"nearest"`` (the nearest pixel centre, torchvision's
            NEAREST_EXACT) or ``"nearest-legacy"`` (torchvision's tensor NEAREST, i.e.
            ``F.interpolate(mode="nearest")``: source index ``floor(i * in / out)`` of the resized
            crop; crops only, no affine).
        pre_resize: side ``P`` > 0: resize every image to ``P x P`` (bilinear) before anything
            else; crop boxes are then drawn on the ``P x P`` image and resized back to the
            output size with antialiasing (only crop and flips; no affine, bilinear only).
        jitter_first: colour-jitter before the geometry (crop and flips) instead of after it.

    The preprocessing keys below are not augmentations: they declare the dataset's
    preprocessing, applied identically to training views and to every clean / evaluation input
    (:class:`selfsup.data.preprocess.Preprocess`).

        clean_resize: side ``S`` > 0: clean inputs are ``CenterCrop(H, W)(Resize(S)(u))``
            (AAVAE's STL-10 clean image, S = 105); 0: the image as stored.
        binarize: threshold ``t`` in ``[0, 1]``: ``x -> 1 if x > t else 0`` (None: off).
        normalize: if true, ``x -> (x - mean[c]) / std[c]`` with the per-channel ``mean``/``std``.
        normalize_stats: ``"given"`` (use ``mean``/``std`` as set) or ``"train"``: when training
            starts, ``mean``/``std`` become the per-channel mean and (population) standard
            deviation of the train split's pixels in [0, 1] and ``normalize`` is switched on; the
            values are saved in the run's config.yaml, so resume and evaluation reuse them
            (:func:`resolve_normalization`).
    """

    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    crop_prob: float = 1.0
    hflip: float = 0.0
    vflip: float = 0.0
    jitter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    jitter_prob: float = 0.0
    grayscale: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel: int = 0
    solarize_prob: float = 0.0
    affine_degrees: float = 0.0
    affine_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    interpolation: str = "bilinear"
    pre_resize: int = 0
    jitter_first: bool = False
    clean_resize: int = 0
    binarize: float | None = None
    normalize: bool = False
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    normalize_stats: str = "given"

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range or inconsistent values."""
        for name in (
            "crop_prob",
            "hflip",
            "vflip",
            "jitter_prob",
            "grayscale",
            "blur_prob",
            "solarize_prob",
        ):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise ConfigError(
                    f"augment.{name} = {p!r} is not a probability. Set it to a number between "
                    "0 and 1 (0 disables the transform, 1 always applies it)."
                )
        a, b = _pair(self.crop_scale, "crop_scale")
        if not 0.0 < a <= b <= 1.0:
            raise ConfigError(
                f"augment.crop_scale = {list(self.crop_scale)} is invalid: it must be [a, b] with "
                "0 < a <= b <= 1 (fractions of the image area kept by the random crop), e.g. "
                "[0.08, 1.0] as in SimCLR or [1.0, 1.0] for no cropping."
            )
        a, b = _pair(self.crop_ratio, "crop_ratio")
        if not 0.0 < a <= b:
            raise ConfigError(
                f"augment.crop_ratio = {list(self.crop_ratio)} is invalid: it must be [a, b] with "
                "0 < a <= b (aspect ratios width/height), e.g. [0.75, 1.3333]."
            )
        if len(self.jitter) != 4 or any(float(s) < 0 for s in self.jitter):
            raise ConfigError(
                f"augment.jitter = {list(self.jitter)} is invalid: it must be four non-negative "
                "strengths [brightness, contrast, saturation, hue], e.g. [0.4, 0.4, 0.2, 0.1]."
            )
        if float(self.jitter[3]) > 0.5:
            raise ConfigError(
                f"augment.jitter hue strength {self.jitter[3]} is above 0.5. The hue shift is a "
                "fraction of a full turn and is drawn from [-h, h]; use a value in [0, 0.5]."
            )
        a, b = _pair(self.blur_sigma, "blur_sigma")
        if not 0.0 < a <= b:
            raise ConfigError(
                f"augment.blur_sigma = {list(self.blur_sigma)} is invalid: it must be [a, b] with "
                "0 < a <= b (Gaussian standard deviations in pixels), e.g. [0.1, 2.0]."
            )
        if (
            not isinstance(self.blur_kernel, int)
            or self.blur_kernel < 0
            or (self.blur_kernel > 0 and self.blur_kernel % 2 == 0)
        ):
            raise ConfigError(
                f"augment.blur_kernel = {self.blur_kernel!r} is invalid: use an odd positive "
                "kernel size, or 0 to pick an odd size near 10% of the image height."
            )
        if float(self.affine_degrees) < 0 or float(self.affine_degrees) > 180:
            raise ConfigError(
                f"augment.affine_degrees = {self.affine_degrees} is invalid: the rotation is drawn "
                "from [-d, d] degrees, so use a value between 0 and 180."
            )
        a, b = _pair(self.affine_scale, "affine_scale")
        if not 0.0 < a <= b:
            raise ConfigError(
                f"augment.affine_scale = {list(self.affine_scale)} is invalid: it must be [a, b] "
                "with 0 < a <= b (zoom factors; [1.0, 1.0] disables scaling)."
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"augment.interpolation = {self.interpolation!r} is not supported. Use one of "
                f"{', '.join(_INTERPOLATIONS)}."
            )
        if self.interpolation == "nearest-legacy" and (
            float(self.affine_degrees) != 0.0 or list(self.affine_scale) != [1.0, 1.0]
        ):
            raise ConfigError(
                "augment.interpolation = nearest-legacy resizes crops as torchvision's tensor "
                "NEAREST and has no affine counterpart; use nearest with augment.affine_*."
            )
        for name in ("pre_resize", "clean_resize"):
            side = getattr(self, name)
            if isinstance(side, bool) or not isinstance(side, int) or side < 0:
                raise ConfigError(
                    f"augment.{name} = {side!r} is invalid: give an image side in pixels (a "
                    "positive integer) or 0 to disable it."
                )
        if self.pre_resize and (
            float(self.affine_degrees) > 0 or [float(v) for v in self.affine_scale] != [1.0, 1.0]
        ):
            raise ConfigError(
                "augment.pre_resize cannot be combined with a random affine (affine_degrees, "
                "affine_scale): the resized pipeline supports crop and flips only. Set one of them "
                "to its default."
            )
        if self.pre_resize and self.interpolation != "bilinear":
            raise ConfigError(
                "augment.pre_resize resamples bilinearly with antialiasing; set "
                "augment.interpolation to bilinear or pre_resize to 0."
            )
        if self.binarize is not None and not 0.0 <= float(self.binarize) <= 1.0:
            raise ConfigError(
                f"augment.binarize = {self.binarize} is invalid: it is a threshold on pixel values "
                "in [0, 1]; use a number in [0, 1] or null to disable binarization."
            )
        if len(self.mean) != len(self.std):
            raise ConfigError(
                f"augment.mean has {len(self.mean)} values but augment.std has {len(self.std)}. "
                "Give one mean and one std per image channel."
            )
        if self.normalize_stats not in ("given", "train"):
            raise ConfigError(
                f"augment.normalize_stats = {self.normalize_stats!r} is unknown. Use 'given' "
                "(augment.mean/std as set) or 'train' (computed from the train split)."
            )
        if self.normalize and not self.mean and self.normalize_stats != "train":
            raise ConfigError(
                "augment.normalize is true but augment.mean and augment.std are empty. Give one "
                "mean and one std per image channel (e.g. [0.5] and [0.5] for grayscale images), "
                "set augment.normalize_stats=train to compute them from the train split, or set "
                "normalize to false."
            )
        if any(float(s) <= 0 for s in self.std):
            raise ConfigError(
                f"augment.std = {list(self.std)} contains a non-positive value; standard "
                "deviations used for normalization must be > 0."
            )


def _pair(values: list[float], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(
            f"augment.{name} = {list(values)} must have exactly two numbers [low, high]."
        )
    return float(values[0]), float(values[1])


def to_float(x: Tensor) -> Tensor:
    """Convert an image batch to float32 in [0, 1]: uint8 ``x -> x / 255``, floats are cast."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise DataError(
            f"Images must be uint8 (0..255) or floating point (0..1), got dtype {x.dtype}. "
            "Convert the images before augmenting them."
        )
    return x.to(torch.float32)


def _gray(x: Tensor) -> Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` of (N, 3, H, W) -> (N, 1, H, W) (torchvision)."""
    r, g, b = x.unbind(dim=1)
    return (
        r.mul(_GRAY_WEIGHTS[0])
        .add_(g, alpha=_GRAY_WEIGHTS[1])
        .add_(b, alpha=_GRAY_WEIGHTS[2])[:, None]
    )


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of (M, 3, H, W) images in [0, 1] by ``shift[m]`` turns (torchvision HSV).

    With ``v = max``, ``d = max - min`` and ``6 h = (g - b) / d``, ``2 + (b - r) / d`` or
    ``4 + (r - g) / d`` according to the maximal channel (r first, then g), the rotated image is
    ``c_n = v - d clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 (h + shift)) mod 6`` and
    ``n = 5, 3, 1`` for R, G, B: the closed form of HSV -> RGB, using ``v s = d``.
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    cr = maxc - x.amin(dim=1)
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    num = torch.where(
        is_r, g - b, torch.where(is_g, (b - r).add_(cr, alpha=2), (r - g).add_(cr, alpha=4))
    )
    h6 = num.div_(torch.where(cr == 0, torch.ones_like(cr), cr)).add_(6.0 * shift.view(-1, 1, 1))
    n = to_device(torch.tensor([5.0, 3.0, 1.0]), x).view(1, 3, 1, 1)
    k = torch.remainder(h6[:, None] + n, 6.0)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return t.mul_(cr[:, None]).neg_().add_(maxc[:, None]).clamp_(0.0, 1.0)


class BatchAugment(torch.nn.Module):
    """Per-sample random augmentation of a batch (see the module docstring for the order).

    Args:
        cfg: the augmentation settings (validated here).
        image_shape: ``(C, H, W)`` of the input images.
        out_size: side of the square output; None keeps ``(H, W)``.
    """

    def __init__(
        self, cfg: AugmentConfig, image_shape: tuple[int, int, int], out_size: int | None = None
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if len(image_shape) != 3 or min(int(v) for v in image_shape) < 1:
            raise ConfigError(
                f"image_shape = {tuple(image_shape)} is invalid: give (channels, height, width) "
                "with positive sizes."
            )
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        if out_size is not None and int(out_size) < 1:
            raise ConfigError(f"out_size = {out_size} is invalid: use a positive image side.")
        self.out_hw = (h, w) if out_size is None else (int(out_size), int(out_size))
        self.jitter_on = cfg.jitter_prob > 0 and any(float(s) > 0 for s in cfg.jitter)
        if c not in (1, 3) and (self.jitter_on or cfg.grayscale > 0):
            raise ConfigError(
                f"Colour jitter and grayscale need 1- or 3-channel images, but the images have "
                f"{c} channels. Set augment.jitter_prob and augment.grayscale to 0."
            )
        kernel = cfg.blur_kernel
        if kernel == 0:
            kernel = int(0.1 * self.out_hw[0])
            kernel = max(3, kernel + 1 if kernel % 2 == 0 else kernel)
        if cfg.blur_prob > 0 and kernel // 2 >= min(self.out_hw):
            raise ConfigError(
                f"augment.blur_kernel = {kernel} is too large for {self.out_hw[0]}x"
                f"{self.out_hw[1]} images (reflect padding needs kernel // 2 < image side). Use a "
                "smaller odd kernel or 0 for the automatic size."
            )
        self.blur_kernel = kernel
        self.affine_on = cfg.affine_degrees > 0 or list(cfg.affine_scale) != [1.0, 1.0]
        if cfg.normalize and len(cfg.mean) != c:
            raise ConfigError(
                f"augment.mean/std have {len(cfg.mean)} values but the images have {c} channels. "
                "Give one mean and one std per channel."
            )
        if cfg.clean_resize and cfg.clean_resize < min(h, w):
            raise ConfigError(
                f"augment.clean_resize = {cfg.clean_resize} is smaller than the {h}x{w} images: "
                "the clean image is resized (shorter side) to clean_resize and centre-cropped back "
                f"to {h}x{w}, so use a side >= {min(h, w)} (or 0 to disable it)."
            )
        # The geometry works on the pre-resized image when pre_resize is set.
        side = int(cfg.pre_resize)
        self.geometry_hw = (side, side) if side else (h, w)
        self.preprocessing = Preprocess(cfg, self.image_shape)

    # ------------------------------------------------------------------ parameters
    def sample_params(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw every per-sample random parameter on the CPU (independently per sample).

        Returns a dict of CPU tensors (first dimension ``n``):
        ``box`` int64 (n, 4) crop ``[top, left, height, width]`` in input pixels;
        ``hflip``/``vflip`` bool; ``angle`` (degrees) and ``scale`` float;
        ``jitter`` bool, ``jitter_factors`` (n, 4) ``[b, c, s, hue]`` (neutral 1, 1, 1, 0 for
        disabled ops), ``jitter_order`` (n, 4) a permutation of ``0..3`` per sample;
        ``grayscale`` bool; ``blur`` bool and ``sigma``; ``solarize`` bool.
        """
        cfg = self.cfg
        g = generator
        box = self._sample_boxes(n, g)

        def coin(p: float) -> Tensor:
            return torch.rand(n, generator=g) < p

        hflip = coin(cfg.hflip)
        vflip = coin(cfg.vflip)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        deg = float(cfg.affine_degrees)
        angle = (u[:, 0] * 2.0 - 1.0) * deg
        s0, s1 = (float(v) for v in cfg.affine_scale)
        scale = s0 + u[:, 1] * (s1 - s0)

        jitter = coin(cfg.jitter_prob) & self.jitter_on
        uj = torch.rand(n, 4, generator=g, dtype=torch.float64)
        lo = torch.tensor([max(0.0, 1.0 - float(s)) for s in cfg.jitter[:3]] + [-cfg.jitter[3]])
        hi = torch.tensor([1.0 + float(s) for s in cfg.jitter[:3]] + [float(cfg.jitter[3])])
        factors = lo.double() + uj * (hi.double() - lo.double())
        order = torch.rand(n, 4, generator=g).argsort(dim=1)

        gray = coin(cfg.grayscale)
        blur = coin(cfg.blur_prob)
        sg0, sg1 = (float(v) for v in cfg.blur_sigma)
        sigma = sg0 + torch.rand(n, generator=g, dtype=torch.float64) * (sg1 - sg0)
        solarize = coin(cfg.solarize_prob)
        return {
            "box": box,
            "hflip": hflip,
            "vflip": vflip,
            "angle": angle.float(),
            "scale": scale.float(),
            "jitter": jitter,
            "jitter_factors": factors.float(),
            "jitter_order": order,
            "grayscale": gray,
            "blur": blur,
            "sigma": sigma.float(),
            "solarize": solarize,
        }

    def _sample_boxes(self, n: int, g: torch.Generator | None) -> Tensor:
        """Vectorised ``RandomResizedCrop.get_params``: per sample up to 10 tries of
        ``area = H W U(scale)``, ``ratio = exp(U(log ratio))``, ``w = round(sqrt(area ratio))``,
        ``h = round(sqrt(area / ratio))``; the first try with ``0 < w <= W``, ``0 < h <= H`` is
        kept with a uniform integer position, else the central crop clipped to the ratio range.
        Samples without crop (probability ``1 - crop_prob``) get the full image. With
        ``pre_resize`` the boxes are in pixels of the resized ``P x P`` image."""
        cfg = self.cfg
        height, width = self.geometry_hw
        area = float(height * width)
        a0, a1 = (float(v) for v in cfg.crop_scale)
        r0, r1 = (math.log(float(v)) for v in cfg.crop_ratio)
        t = _MAX_CROP_TRIES
        u = torch.rand(n, t, 2, generator=g, dtype=torch.float64)
        target = area * (a0 + u[..., 0] * (a1 - a0))
        ratio = torch.exp(r0 + u[..., 1] * (r1 - r0))
        w = torch.round(torch.sqrt(target * ratio))
        h = torch.round(torch.sqrt(target / ratio))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # index of first valid try
        w = w.gather(1, first)[:, 0]
        h = h.gather(1, first)[:, 0]
        found = ok.any(dim=1)
        # Fallback: central crop, clipped to the aspect-ratio range.
        in_ratio = width / height
        lo_r, hi_r = float(cfg.crop_ratio[0]), float(cfg.crop_ratio[1])
        if in_ratio < lo_r:
            fw, fh = width, int(round(width / lo_r))
        elif in_ratio > hi_r:
            fw, fh = int(round(height * hi_r)), height
        else:
            fw, fh = width, height
        fw, fh = max(1, fw), max(1, fh)  # tiny images: never an empty crop
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        up = torch.rand(n, 2, generator=g, dtype=torch.float64)
        top = torch.floor(up[:, 0] * (height - h + 1)).clamp_(max=height - h)
        left = torch.floor(up[:, 1] * (width - w + 1)).clamp_(max=width - w)
        top = torch.where(found, top, torch.floor((height - h) / 2))
        left = torch.where(found, left, torch.floor((width - w) / 2))
        box = torch.stack([top, left, h, w], dim=1).long()
        apply = torch.rand(n, generator=g) < cfg.crop_prob
        full = torch.tensor([0, 0, height, width], dtype=torch.long)
        return torch.where(apply[:, None], box, full)

    # ------------------------------------------------------------------ application
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch (N, C, H, W) (uint8 or float in [0, 1]) with fresh random parameters;
        returns float32 (N, C, out, out) on the input's device."""
        if isinstance(x, CroppedViews):  # streamed image folder: crops taken by the loader
            return augment_cropped(self, x, 1, generator)
        return self.apply(x, self.sample_params(x.shape[0], generator))

    def views(self, x: Tensor, n_views: int, generator: torch.Generator | None = None) -> Tensor:
        """``n_views`` independent augmentations of each sample, laid out sample-major:
        rows ``[s0v0, s0v1, ..., s1v0, s1v1, ...]`` so ``out.view(N, n_views, C, h, w)[i]``
        holds the views of sample ``i``."""
        if n_views < 1:
            raise ConfigError(f"n_views = {n_views} is invalid: ask for at least one view.")
        if isinstance(x, CroppedViews):  # streamed image folder: crops taken by the loader
            return augment_cropped(self, x, n_views, generator)
        return self.forward(x.repeat_interleave(n_views, dim=0), generator)

    def eval_transform(self, x: Tensor) -> Tensor:
        """Deterministic preprocessing of clean / evaluation inputs:
        ``preprocessing.clean(to_float(x))`` (centre crop if declared, binarize, normalize)."""
        x = x.evaluation_view() if isinstance(x, CroppedViews) else x  # streamed image folder
        self._check_input(x)
        return self.preprocessing.clean(to_float(x))

    @staticmethod
    def to_float(x: Tensor) -> Tensor:
        """uint8 ``x -> x / 255`` as float32; float input is cast to float32."""
        return to_float(x)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise DataError(
                f"Augmentation was built for images of shape {self.image_shape} (C, H, W) but got "
                f"a batch of shape {tuple(x.shape)}. Pass batches (N, C, H, W) of the dataset the "
                "augmentation was configured for."
            )

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Apply the augmentation with the given parameters (deterministic).

        ``params`` is the output of :meth:`sample_params` (CPU tensors), one row per sample.
        """
        self._check_input(x)
        n = x.shape[0]
        for key, value in params.items():
            if value.shape[0] != n:
                raise DataError(
                    f"Augmentation parameter {key!r} is for {value.shape[0]} samples but the batch "
                    f"has {n}. Draw parameters with sample_params(len(batch))."
                )
        x = to_float(x)
        if n == 0:
            return self.preprocessing.finish(x.new_zeros(0, x.shape[1], *self.out_hw))
        if self.cfg.pre_resize:
            x = self._pre_resize(x)
        if self.jitter_on and self.cfg.jitter_first:
            x = self._jitter(x, params)
        x = self._resized_geometry(x, params) if self.cfg.pre_resize else self._geometry(x, params)
        if self.jitter_on and not self.cfg.jitter_first:
            x = self._jitter(x, params)
        c = x.shape[1]
        if self.cfg.grayscale > 0 and c == 3:
            sel = to_device(params["grayscale"], x).view(-1, 1, 1, 1)
            x = torch.where(sel, _gray(x).expand_as(x), x)
        if self.cfg.blur_prob > 0:
            x = self._blur(x, params)
        if self.cfg.solarize_prob > 0:
            sel = to_device(params["solarize"], x).view(-1, 1, 1, 1)
            x = torch.where(sel & (x >= 0.5), 1.0 - x, x)
        return self.preprocessing.finish(x)

    def _pre_resize(self, x: Tensor) -> Tensor:
        """Every image resized to ``P x P`` (torchvision ``Resize((P, P))``, bilinear with
        antialiasing): ``x' = Ry x Rx^T`` with :func:`resize_weights` matrices."""
        _, height, width = self.image_shape
        side = self.geometry_hw[0]
        ry = resize_weights(height, side, torch.zeros(1), torch.full((1,), float(height)))[0]
        rx = resize_weights(width, side, torch.zeros(1), torch.full((1,), float(width)))[0]
        return to_device(ry, x) @ x @ to_device(rx, x).T

    def _resized_geometry(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop box -> resize to the output size (antialiased) -> horizontal / vertical flip, for
        the ``P x P`` pre-resized images: ``out_n = Ry_n x_n Rx_n^T`` with per-sample matrices
        :func:`resize_weights` of the box's rows and columns (rows reversed for a flip), i.e.
        torchvision's ``resized_crop(..., antialias=True)`` followed by the flips."""
        height, width = self.geometry_hw
        ho, wo = self.out_hw
        top, left, bh, bw = params["box"].unbind(dim=1)
        ry = resize_weights(height, ho, top, bh)
        rx = resize_weights(width, wo, left, bw)
        ry = torch.where(params["vflip"].view(-1, 1, 1), ry.flip(1), ry)
        rx = torch.where(params["hflip"].view(-1, 1, 1), rx.flip(1), rx)
        ry, rx = to_device(ry, x), to_device(rx, x)
        return ry[:, None] @ x @ rx.transpose(1, 2)[:, None]

    def _geometry(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop, flips and affine as one grid ``input = Crop . Flip . Affine^-1 (output)``.

        In normalized coordinates (align_corners=False) of an output of size (Ho, Wo):
        ``Affine^-1 = (1/s) [[cos a, sin a Ho/Wo], [-sin a Wo/Ho, cos a]]`` (torchvision's inverse
        rotation by ``a`` about the centre), ``Flip = diag(+-1, +-1)``, and the crop box
        ``(i, j, h, w)`` maps ``x -> (w / W) x + (2 j + w) / W - 1`` (same for y). Sampling points
        are clamped to the pixel centres of the crop box, which reproduces the edge clamping of
        ``resize(crop(img))``; outside the rotated/scaled crop the output is faded to zero exactly
        like zero padding of the intermediate image.
        """
        _, height, width = self.image_shape
        ho, wo = self.out_hw
        box = params["box"].to(torch.float64)
        top, left, bh, bw = box.unbind(dim=1)
        hflip, vflip = params["hflip"], params["vflip"]
        identity_crop = bool(
            ((top == 0) & (left == 0) & (bh == height) & (bw == width)).all()
            and (ho, wo) == (height, width)
        )
        no_flip = not bool(hflip.any() or vflip.any())
        if self.affine_on:
            angle = torch.deg2rad(params["angle"].to(torch.float64))
            inv_s = 1.0 / params["scale"].to(torch.float64)
            cos, sin = torch.cos(angle) * inv_s, torch.sin(angle) * inv_s
            a_aff = torch.stack(
                [torch.stack([cos, sin * ho / wo], -1), torch.stack([-sin * wo / ho, cos], -1)], -2
            )
            no_affine = bool(((params["angle"] == 0) & (params["scale"] == 1)).all())
        else:
            a_aff = torch.eye(2, dtype=torch.float64).expand(x.shape[0], 2, 2)
            no_affine = True
        if identity_crop and no_flip and no_affine:
            return x
        fx = 1.0 - 2.0 * hflip.to(torch.float64)
        fy = 1.0 - 2.0 * vflip.to(torch.float64)
        crop_flip = torch.stack([bw / width * fx, bh / height * fy], dim=1)  # diag(C) diag(F)
        lin = crop_flip[:, :, None] * a_aff
        trans = torch.stack([(2 * left + bw) / width - 1, (2 * top + bh) / height - 1], dim=1)
        theta = to_device(torch.cat([lin, trans[:, :, None]], dim=2), x)
        n, c = x.shape[:2]
        grid = F.affine_grid(theta, [n, c, ho, wo], align_corners=False)
        # Keep sampling points on pixel centres inside the crop box (edge clamping of resize).
        lo = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1)
        hi = torch.stack(
            [(2 * (left + bw) - 1) / width - 1, (2 * (top + bh) - 1) / height - 1], dim=1
        )
        lo = to_device(lo, x).view(n, 1, 1, 2)
        hi = to_device(hi, x).view(n, 1, 1, 2)
        grid = torch.maximum(torch.minimum(grid, hi), lo)
        mode = self.cfg.interpolation
        if mode in ("nearest", "nearest-legacy"):
            # Nearest pixel centre as floor(coordinate + 1/2) (torchvision "nearest-exact"); the
            # legacy rule floor(i * in / out) is that shifted by half an output pixel.
            size = to_device(torch.tensor([float(width), float(height)]), x)
            pos = (grid + 1) * size / 2
            if mode == "nearest-legacy":
                ratio = torch.stack([bw / wo, bh / ho], dim=1)
                pos = pos - 0.5 * to_device(ratio, x).view(n, 1, 1, 2)
                mode = "nearest"
            pix = torch.floor(pos + 1e-4)
            grid = (2 * pix + 1) / size - 1
        out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        if not no_affine:
            theta_aff = torch.cat([a_aff, torch.zeros(n, 2, 1, dtype=torch.float64)], dim=2)
            g1 = F.affine_grid(to_device(theta_aff, x), [n, 1, ho, wo], align_corners=False)
            size = to_device(torch.tensor([float(wo), float(ho)]), x)
            pix = (g1 + 1) * size / 2 - 0.5  # pixel coordinates in the intermediate image
            if mode == "nearest":
                inside = (pix >= -0.5) & (pix < size - 0.5)
                mask = inside.all(dim=-1).to(x.dtype)
            else:
                m = (pix + 1).clamp(0, 1) * (size - pix).clamp(0, 1)
                mask = m[..., 0] * m[..., 1]
            out = out * mask[:, None]
        return out

    def _jitter(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Colour jitter in a per-sample random order, as torchvision ``ColorJitter``.

        Pass ``k`` applies to each jittered sample the op ``order[n, k]``. Brightness, contrast and
        saturation are one blend ``x <- clamp(f x + (1 - f) m, 0, 1)`` with ``m = 0``, the mean
        of the grayscale image, or the per-pixel grayscale respectively (``f = 1``, the neutral
        factor, for samples doing another op this pass); hue runs on the selected subset only.
        """
        strengths = [float(s) for s in self.cfg.jitter]
        sel = params["jitter"]
        if not bool(sel.any()):
            return x
        factors = params["jitter_factors"]
        order = params["jitter_order"]
        c = x.shape[1]
        for k in range(4):
            op = torch.where(sel, order[:, k], torch.full_like(order[:, k], -1))
            if c == 1:  # saturation and hue are no-ops on single-channel images
                op = torch.where((op == 2) | (op == 3), torch.full_like(op, -1), op)
            for o in range(4):
                if strengths[o] == 0:
                    op = torch.where(op == o, torch.full_like(op, -1), op)
            use_b, use_c, use_s = (bool((op == o).any()) for o in range(3))
            if use_b or use_c or use_s:
                blend = (op >= 0) & (op <= 2)
                safe = op.clamp(0, 2)
                f = torch.where(blend, factors.gather(1, safe[:, None])[:, 0], 1.0)
                f = to_device(f, x).view(-1, 1, 1, 1)
                m = None
                if use_c or use_s:
                    gray = _gray(x) if c == 3 else x
                    is_c = to_device((op == 1).float(), x).view(-1, 1, 1, 1)
                    if use_c:
                        m = is_c * gray.mean(dim=(1, 2, 3), keepdim=True)
                    if use_s:
                        is_s = to_device((op == 2).float(), x).view(-1, 1, 1, 1)
                        m = is_s * gray if m is None else m + is_s * gray
                x = x * f if m is None else x * f + (1.0 - f) * m
                x = x.clamp_(0.0, 1.0)
            hue_idx = torch.nonzero(op == 3)[:, 0]
            if hue_idx.numel():
                shift = to_device(factors[hue_idx, 3], x)
                if hue_idx.numel() == x.shape[0]:
                    x = _adjust_hue(x, shift)
                else:
                    idx = to_device(hue_idx, x)
                    x = x.index_copy(0, idx, _adjust_hue(x.index_select(0, idx), shift))
        return x

    def _blur(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Gaussian blur of the selected samples, kernel ``exp(-t^2 / (2 sigma^2))`` normalized
        over ``t = -(k-1)/2 .. (k-1)/2``, applied separably (rows then columns) as a grouped
        convolution with reflect padding ``k // 2`` (torchvision ``gaussian_blur``)."""
        idx_cpu = torch.nonzero(params["blur"])[:, 0]
        if idx_cpu.numel() == 0:
            return x
        k = self.blur_kernel
        n, c, h, w = x.shape
        dev = x.device
        sigma = to_device(params["sigma"][idx_cpu], x)
        t = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, k, device=dev, dtype=x.dtype)
        kern = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
        kern = kern / kern.sum(dim=1, keepdim=True)  # (m, k)
        m = idx_cpu.numel()
        kern = kern.repeat_interleave(c, dim=0)  # (m*c, k)
        whole = m == n
        idx = to_device(idx_cpu, x)
        xs = x if whole else x.index_select(0, idx)
        xs = F.pad(xs.reshape(1, m * c, h, w), [k // 2] * 4, mode="reflect")
        xs = F.conv2d(xs, kern.view(m * c, 1, 1, k), groups=m * c)
        xs = F.conv2d(xs, kern.view(m * c, 1, k, 1), groups=m * c).view(m, c, h, w)
        return xs if whole else x.index_copy(0, idx, xs)


# ==================================================================================================
# Streamed image folders (issue 19; kept apart from the preprocessing above).
#
# For image folders too large for memory the random resized crop is taken in the DataLoader
# workers from the FULL-RESOLUTION decoded file (as the ImageNet recipes do); the batch reaches the
# method as a :class:`CroppedViews`, and :class:`BatchAugment` applies the rest of the augmentation
# (flips, affine, colour jitter, grayscale, blur, solarization, binarization, normalization) to the
# crops on the training device with the crop itself switched off. Evaluation inputs are the
# deterministic ``clean`` view (shorter side resized to S, centre crop S x S).
# ==================================================================================================
class CroppedViews:
    """A training batch of a streamed image folder.

    ``clean``: uint8 (N, C, S, S), each image's shorter side resized to S and centre-cropped
    (the evaluation view), or None when the method does not use it (``Method.train_uses_clean``);
    ``crops``: uint8 (N, V, C, S, S), V random resized crops per image taken from the
    full-resolution file, or None when the augmentation has no random crop (``crop_scale`` [1, 1]
    or ``crop_prob`` 0): the views are then augmentations of ``clean``, exactly as for in-memory
    datasets. ``shape`` is (N, C, S, S) so that a method can read the batch size as usual.
    """

    def __init__(self, clean: Tensor | None, crops: Tensor | None = None) -> None:
        first = clean if clean is not None else (None if crops is None else crops[:, 0])
        if first is None or first.ndim != 4 or (crops is not None and (
                crops.ndim != 5 or crops.shape[0] != first.shape[0]
                or crops.shape[2:] != first.shape[1:])):
            raise DataError(
                "CroppedViews needs clean (N, C, S, S) and/or crops (N, V, C, S, S), got "
                f"{None if clean is None else tuple(clean.shape)} and "
                f"{None if crops is None else tuple(crops.shape)}."
            )
        self.clean = clean
        self.crops = crops
        self.shape = first.shape

    @property
    def device(self) -> torch.device:
        return (self.clean if self.clean is not None else self.crops).device  # type: ignore

    def __len__(self) -> int:
        return int(self.shape[0])

    def evaluation_view(self) -> Tensor:
        if self.clean is None:
            raise DataError(
                "This method uses the un-augmented training images (preprocess), but the "
                "image-folder loader was told it does not: its train_uses_clean() must return "
                "True."
            )
        return self.clean

    def to(self, *args: object, **kwargs: object) -> CroppedViews:
        """Both tensors moved like ``Tensor.to`` (Lightning moves batches with this)."""
        moved = [None if t is None else t.to(*args, **kwargs)  # type: ignore[arg-type]
                 for t in (self.clean, self.crops)]
        return CroppedViews(*moved)


def augment_cropped(
    aug: BatchAugment, x: CroppedViews, n_views: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n_views`` augmented views per image, sample-major (as :meth:`BatchAugment.views`).

    View ``v`` of image ``i`` is crop ``v`` taken by the loader (or ``clean`` when it took none)
    passed through :meth:`BatchAugment.apply` with freshly drawn parameters whose crop box is the
    whole (already cropped) image, i.e. every transform but the crop.
    """
    if x.crops is None:
        source = x.evaluation_view().repeat_interleave(n_views, dim=0)
    elif n_views > x.crops.shape[1]:
        raise ConfigError(
            f"The method asked for {n_views} augmented views per image, but the image-folder "
            f"loader cropped {x.crops.shape[1]}. The method's train_views() must return the "
            "number of views its training_loss draws."
        )
    else:
        source = x.crops[:, :n_views].flatten(0, 1)
    params = aug.sample_params(source.shape[0], generator)
    _, height, width = aug.image_shape
    params["box"] = torch.tensor([0, 0, height, width]).expand(source.shape[0], 4).clone()
    return aug.apply(source, params)
