"""Tests for selfsup.data.augment: agreement with torchvision for fixed parameters, sampling
statistics against torchvision's own samplers, reproducibility, layout and validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T1
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode as IM

from selfsup.data.augment import AugmentConfig, BatchAugment, to_float
from selfsup.errors import ConfigError, DataError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=_gen(seed))


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (bicubic upsampling of 6x6 noise), so interpolation error is small."""
    small = torch.rand(n, 3, 6, 6, generator=_gen(seed))
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


SIMCLR = dict(
    crop_scale=[0.08, 1.0],
    hflip=0.5,
    jitter=[0.4, 0.4, 0.4, 0.1],
    jitter_prob=0.8,
    grayscale=0.2,
)


# ---------------------------------------------------------------- agreement with torchvision
def test_crop_flip_matches_torchvision_bilinear() -> None:
    x = _images(32)
    aug = BatchAugment(AugmentConfig(crop_scale=[0.08, 1.0], hflip=0.5, vflip=0.5), (3, 32, 32), 24)
    p = aug.sample_params(32, _gen(1))
    assert p["hflip"].any() and (~p["hflip"]).any() and p["vflip"].any()
    out = aug.apply(x, p)
    for n in range(32):
        t, left, h, w = p["box"][n].tolist()
        ref = TF.resized_crop(x[n], t, left, h, w, [24, 24], IM.BILINEAR, antialias=False)
        if p["hflip"][n]:
            ref = TF.horizontal_flip(ref)
        if p["vflip"][n]:
            ref = TF.vertical_flip(ref)
        # Sampling points are clamped to the crop box exactly like resize's edge clamping, so the
        # only difference is float rounding of the grid (measured max 2.2e-6).
        torch.testing.assert_close(out[n], ref, atol=2e-5, rtol=0)


def test_crop_nearest_matches_torchvision_nearest_exact() -> None:
    x = _images(16)
    aug = BatchAugment(
        AugmentConfig(crop_scale=[0.08, 1.0], interpolation="nearest"), (3, 32, 32), 24
    )
    p = aug.sample_params(16, _gen(2))
    out = aug.apply(x, p)
    for n in range(16):
        t, left, h, w = p["box"][n].tolist()
        ref = TF.resized_crop(x[n], t, left, h, w, [24, 24], IM.NEAREST_EXACT)
        torch.testing.assert_close(out[n], ref, atol=0, rtol=0)  # exact: pixels are copied


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_affine_matches_torchvision(mode: str) -> None:
    x = _images(12)
    cfg = AugmentConfig(affine_degrees=40, affine_scale=[0.6, 1.4], interpolation=mode)
    aug = BatchAugment(cfg, (3, 32, 32))
    p = aug.sample_params(12, _gen(3))
    out = aug.apply(x, p)
    interp = IM.BILINEAR if mode == "bilinear" else IM.NEAREST
    for n in range(12):
        ref = TF.affine(
            x[n], float(p["angle"][n]), [0.0, 0.0], float(p["scale"][n]), [0.0, 0.0], interp
        )
        if mode == "bilinear":
            # Same grid up to float rounding (measured max abs 3.4e-6).
            torch.testing.assert_close(out[n], ref, atol=2e-5, rtol=0)
        else:
            # Nearest: a point lying within float rounding of a half-pixel tie may pick the other
            # neighbour (measured: 2 of 1024 pixels in 2 of 12 images); allow 1% of pixels.
            assert (out[n] != ref).any(0).float().mean() < 0.01


def test_crop_plus_affine_close_to_sequential_torchvision() -> None:
    x = _smooth_images(16)
    cfg = AugmentConfig(crop_scale=[0.3, 1.0], affine_degrees=30, affine_scale=[0.7, 1.3])
    aug = BatchAugment(cfg, (3, 32, 32))
    p = aug.sample_params(16, _gen(4))
    out = aug.apply(x, p)
    for n in range(16):
        t, left, h, w = p["box"][n].tolist()
        ref = TF.resized_crop(x[n], t, left, h, w, [32, 32], IM.BILINEAR, antialias=False)
        ref = TF.affine(
            ref, float(p["angle"][n]), [0.0, 0.0], float(p["scale"][n]), [0.0, 0.0], IM.BILINEAR
        )
        # One interpolation instead of torchvision's two: measured max abs 0.031, mean abs 0.0029
        # on these smooth images; bounds with margin.
        diff = (out[n] - ref).abs()
        assert diff.max() < 0.08
        assert diff.mean() < 0.006


def test_color_jitter_random_order_matches_torchvision() -> None:
    x = _images(64, size=16)
    x[0] = 0.5  # constant image: zero saturation, undefined hue
    x[1, :, :4] = 1.0  # saturated white rows
    x[1, 0, 4:8] = x[1, 1, 4:8]  # ties between max channels
    cfg = AugmentConfig(jitter=[0.8, 0.8, 0.8, 0.5], jitter_prob=0.8)
    aug = BatchAugment(cfg, (3, 16, 16))
    p = aug.sample_params(64, _gen(5))
    assert p["jitter"].any() and (~p["jitter"]).any()
    out = aug.apply(x, p)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for n in range(64):
        ref = x[n]
        if p["jitter"][n]:
            for o in p["jitter_order"][n].tolist():
                ref = fns[o](ref, float(p["jitter_factors"][n, o]))
        # Same formulas; hue uses an algebraically equal HSV->RGB (measured max 1.8e-6).
        torch.testing.assert_close(out[n], ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_single_jitter_op_matches_torchvision(op: int) -> None:
    x = _images(16, size=16, seed=6)
    strengths = [0.0, 0.0, 0.0, 0.0]
    strengths[op] = 0.5 if op == 3 else 0.9
    aug = BatchAugment(AugmentConfig(jitter=strengths, jitter_prob=1.0), (3, 16, 16))
    p = aug.sample_params(16, _gen(7))
    out = aug.apply(x, p)
    fn = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][op]
    for n in range(16):
        ref = fn(x[n], float(p["jitter_factors"][n, op]))
        tol = 1e-6 if op == 0 else 2e-5  # brightness is one multiply + clamp: exact up to 1 ulp
        torch.testing.assert_close(out[n], ref, atol=tol, rtol=0)


def test_grayscale_blur_solarize_match_torchvision() -> None:
    x = _images(64, size=20, seed=8)
    cfg = AugmentConfig(grayscale=0.5, blur_prob=0.5, blur_sigma=[0.1, 2.0], solarize_prob=0.5)
    aug = BatchAugment(cfg, (3, 20, 20))
    assert aug.blur_kernel == 3  # int(0.1 * 20) = 2 -> next odd
    p = aug.sample_params(64, _gen(9))
    out = aug.apply(x, p)
    for n in range(64):
        ref = x[n]
        if p["grayscale"][n]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        if p["blur"][n]:
            ref = TF.gaussian_blur(ref, [3, 3], [float(p["sigma"][n])] * 2)
        if p["solarize"][n]:
            ref = TF.solarize(ref, 0.5)
        # grayscale/solarize are exact; separable blur vs 2-D kernel differ by rounding (~2e-7).
        torch.testing.assert_close(out[n], ref, atol=2e-6, rtol=0)


def test_blur_explicit_kernel_matches_torchvision() -> None:
    x = _images(8, size=24, seed=10)
    aug = BatchAugment(AugmentConfig(blur_prob=1.0, blur_kernel=7), (3, 24, 24))
    p = aug.sample_params(8, _gen(11))
    out = aug.apply(x, p)
    for n in range(8):
        ref = TF.gaussian_blur(x[n], [7, 7], [float(p["sigma"][n])] * 2)
        torch.testing.assert_close(out[n], ref, atol=2e-6, rtol=0)


def test_binarize_and_normalize() -> None:
    x = _images(4, c=3, size=8, seed=12)
    cfg = AugmentConfig(binarize=0.3, normalize=True, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    aug = BatchAugment(cfg, (3, 8, 8))
    out = aug(x, _gen(0))
    ref = TF.normalize((x > 0.3).float(), [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    u8 = (x * 255).round().to(torch.uint8)
    ev = aug.eval_transform(u8)  # evaluation inputs get the same preprocessing: binarized too
    ref = TF.normalize((u8.float() / 255 > 0.3).float(), cfg.mean, cfg.std)
    torch.testing.assert_close(ev, ref)


def test_single_channel_color_ops_are_noops() -> None:
    x = _images(16, c=1, size=12, seed=13)
    cfg = AugmentConfig(jitter=[0.0, 0.0, 0.8, 0.4], jitter_prob=1.0, grayscale=1.0)
    out = BatchAugment(cfg, (1, 12, 12))(x, _gen(0))
    assert torch.equal(out, x)
    # contrast on one channel blends with the image mean, as torchvision
    aug = BatchAugment(AugmentConfig(jitter=[0.0, 0.7, 0.0, 0.0], jitter_prob=1.0), (1, 12, 12))
    p = aug.sample_params(16, _gen(1))
    out = aug.apply(x, p)
    for n in range(16):
        ref = TF.adjust_contrast(x[n], float(p["jitter_factors"][n, 1]))
        torch.testing.assert_close(out[n], ref, atol=2e-6, rtol=0)


# ---------------------------------------------------------------- sampling statistics
def test_crop_statistics_match_torchvision_get_params() -> None:
    n = 4000
    scale, ratio = [0.08, 1.0], [3 / 4, 4 / 3]
    aug = BatchAugment(AugmentConfig(crop_scale=scale, crop_ratio=ratio), (3, 32, 32))
    box = aug.sample_params(n, _gen(14))["box"].double()
    torch.manual_seed(14)
    img = torch.zeros(3, 32, 32)
    ref = torch.tensor([T1.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(n)])
    ref = ref.double()
    for b in (box, ref):  # boxes inside the image
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 0] + b[:, 2] <= 32).all() and (b[:, 1] + b[:, 3] <= 32).all()
    area, area_ref = box[:, 2] * box[:, 3] / 1024, ref[:, 2] * ref[:, 3] / 1024
    logr, logr_ref = torch.log(box[:, 3] / box[:, 2]), torch.log(ref[:, 3] / ref[:, 2])
    # sd of the mean area is ~0.0042 for n = 4000: 0.02 is ~5 standard errors of the difference
    assert abs(area.mean() - area_ref.mean()) < 0.02
    assert abs(area.std() - area_ref.std()) < 0.02
    assert abs(logr.mean() - logr_ref.mean()) < 0.02
    assert abs(logr.std() - logr_ref.std()) < 0.02
    assert abs(area.min() - area_ref.min()) < 0.01 and area.max() == area_ref.max() == 1.0
    # positions: centre of the crop uniform over the valid range, mean near the image centre
    centre = box[:, 0] + box[:, 2] / 2
    assert abs(centre.mean() - 16) < 0.5


def test_crop_fallback_rate_matches_torchvision() -> None:
    # With scale near 1 and a wide ratio range many tries fail; compare the central-crop fallback.
    n, scale, ratio = 3000, [0.9, 1.0], [0.2, 5.0]
    aug = BatchAugment(AugmentConfig(crop_scale=scale, crop_ratio=ratio), (1, 20, 30))
    box = aug.sample_params(n, _gen(15))["box"]
    torch.manual_seed(15)
    img = torch.zeros(1, 20, 30)
    ref = torch.tensor([T1.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(n)])
    full = ((box[:, 2] == 20) & (box[:, 3] == 30)).float().mean()
    full_ref = ((ref[:, 2] == 20) & (ref[:, 3] == 30)).float().mean()
    assert full_ref > 0.05  # the fallback is exercised
    assert abs(full - full_ref) < 0.04


def test_crop_fallback_central_crop_clipped_to_ratio() -> None:
    # Image 10x40 (ratio 4) with ratio range [1, 2] and scale 1: every try fails -> central crop
    # of width round(10 * 2) = 20, as torchvision.
    cfg = AugmentConfig(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 2.0])
    box = BatchAugment(cfg, (1, 10, 40)).sample_params(5, _gen(0))["box"]
    ref = T1.RandomResizedCrop.get_params(torch.zeros(1, 10, 40), [1.0, 1.0], [1.0, 2.0])
    assert ref == (0, 10, 10, 20)
    assert (box == torch.tensor([0, 10, 10, 20])).all()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    a=st.floats(0.01, 1.0),
    b=st.floats(0.01, 1.0),
    r=st.floats(0.2, 5.0),
    q=st.floats(1.0, 3.0),
    seed=st.integers(0, 1000),
)
def test_crop_box_never_leaves_image(
    h: int, w: int, a: float, b: float, r: float, q: float, seed: int
) -> None:
    cfg = AugmentConfig(crop_scale=[min(a, b), max(a, b)], crop_ratio=[r, r * q])
    box = BatchAugment(cfg, (1, h, w)).sample_params(64, _gen(seed))["box"]
    top, left, bh, bw = box.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()


def test_crop_prob_and_flip_rates() -> None:
    n = 4000
    cfg = AugmentConfig(crop_scale=[0.2, 0.5], crop_prob=0.3, hflip=0.5, vflip=0.2)
    p = BatchAugment(cfg, (3, 32, 32)).sample_params(n, _gen(16))
    cropped = (p["box"][:, 2] * p["box"][:, 3] < 1024).float().mean()
    # binomial sd <= 0.008 for n = 4000; tolerance ~4-5 sd
    assert abs(cropped - 0.3) < 0.035
    assert abs(p["hflip"].float().mean() - 0.5) < 0.035
    assert abs(p["vflip"].float().mean() - 0.2) < 0.03


def test_jitter_and_other_parameter_ranges() -> None:
    n = 4000
    cfg = AugmentConfig(
        jitter=[0.4, 1.5, 0.2, 0.1],
        jitter_prob=0.8,
        grayscale=0.2,
        blur_prob=0.5,
        blur_sigma=[0.1, 2.0],
        solarize_prob=0.2,
        affine_degrees=20,
        affine_scale=[0.8, 1.2],
    )
    p = BatchAugment(cfg, (3, 32, 32)).sample_params(n, _gen(17))
    f = p["jitter_factors"]
    lo = torch.tensor([0.6, 0.0, 0.8, -0.1])
    hi = torch.tensor([1.4, 2.5, 1.2, 0.1])
    assert (f >= lo).all() and (f <= hi).all()
    assert ((f.amin(0) - lo).abs() < 0.01).all() and ((f.amax(0) - hi).abs() < 0.01).all()
    assert ((f.mean(0) - (lo + hi) / 2).abs() < 0.04 * (hi - lo)).all()
    order = p["jitter_order"]
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # permutations
    first = torch.bincount(order[:, 0], minlength=4).float() / n
    assert ((first - 0.25).abs() < 0.03).all()
    assert abs(p["jitter"].float().mean() - 0.8) < 0.03
    assert abs(p["grayscale"].float().mean() - 0.2) < 0.03
    assert abs(p["blur"].float().mean() - 0.5) < 0.035
    assert abs(p["solarize"].float().mean() - 0.2) < 0.03
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert p["angle"].abs().max() <= 20 and p["angle"].abs().max() > 19.5
    assert p["scale"].min() >= 0.8 and p["scale"].max() <= 1.2


def test_parameters_independent_across_samples() -> None:
    cfg = AugmentConfig(**SIMCLR, blur_prob=0.5)
    p = BatchAugment(cfg, (3, 32, 32)).sample_params(200, _gen(18))
    assert torch.unique(p["box"], dim=0).shape[0] > 150
    assert torch.unique(p["jitter_factors"][:, 0]).numel() == 200
    assert torch.unique(p["sigma"]).numel() == 200
    assert torch.unique(p["jitter_order"], dim=0).shape[0] == 24  # all permutations occur
    # independence between two parameters: correlation of crop area and brightness ~ 0
    area = (p["box"][:, 2] * p["box"][:, 3]).double()
    r = torch.corrcoef(torch.stack([area, p["jitter_factors"][:, 0].double()]))[0, 1]
    assert abs(r) < 0.25


# ---------------------------------------------------------------- behaviour
def test_reproducible_with_seed_and_seed_matters() -> None:
    x = _images(16)
    aug = BatchAugment(AugmentConfig(**SIMCLR, blur_prob=0.5, solarize_prob=0.2), (3, 32, 32))
    a = aug(x, _gen(42))
    b = aug(x, _gen(42))
    c = aug(x, _gen(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_uint8_and_float_inputs_agree() -> None:
    u8 = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=_gen(19))
    aug = BatchAugment(AugmentConfig(**SIMCLR, blur_prob=0.5), (3, 32, 32), out_size=28)
    a = aug(u8, _gen(7))
    b = aug(u8.float() / 255, _gen(7))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(to_float(u8), u8.float() / 255)


def test_output_shape_dtype_range_and_identity() -> None:
    u8 = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=_gen(20))
    out = BatchAugment(AugmentConfig(**SIMCLR), (3, 32, 32), out_size=24)(u8, _gen(0))
    assert out.shape == (5, 3, 24, 24) and out.dtype == torch.float32
    assert out.device == u8.device
    assert out.min() >= 0 and out.max() <= 1
    ident = BatchAugment(AugmentConfig(), (3, 32, 32))(u8, _gen(0))
    assert torch.equal(ident, u8.float() / 255)  # defaults are the identity
    empty = BatchAugment(AugmentConfig(**SIMCLR), (3, 32, 32), out_size=16)(u8[:0])
    assert empty.shape == (0, 3, 16, 16)


def test_views_layout_is_sample_major() -> None:
    n, v = 20, 3
    x = _images(n, size=8, seed=21)
    aug = BatchAugment(AugmentConfig(hflip=0.5), (3, 8, 8))
    out = aug.views(x, v, _gen(22))
    assert out.shape == (n * v, 3, 8, 8)
    grouped = out.view(n, v, 3, 8, 8)
    differing = 0
    for i in range(n):
        for j in range(v):
            view = grouped[i, j]
            assert torch.equal(view, x[i]) or torch.equal(view, x[i].flip(-1))
        differing += int(not torch.equal(grouped[i, 0], grouped[i, 1]))
    assert differing > 3  # views of one sample are augmented independently


def test_shape_mismatch_raises_data_error() -> None:
    aug = BatchAugment(AugmentConfig(), (3, 32, 32))
    with pytest.raises(DataError):
        aug(torch.zeros(2, 1, 32, 32))
    with pytest.raises(DataError):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.int32))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(hflip=1.5),
        dict(crop_prob=-0.1),
        dict(jitter_prob=2.0),
        dict(crop_scale=[0.0, 1.0]),
        dict(crop_scale=[0.5, 0.2]),
        dict(crop_scale=[0.5, 1.2]),
        dict(crop_scale=[0.5]),
        dict(crop_ratio=[1.5, 0.5]),
        dict(crop_ratio=[-1.0, 1.0]),
        dict(jitter=[0.4, 0.4, 0.4]),
        dict(jitter=[-0.1, 0.0, 0.0, 0.0]),
        dict(jitter=[0.0, 0.0, 0.0, 0.6]),
        dict(blur_sigma=[2.0, 0.1]),
        dict(blur_kernel=4),
        dict(blur_kernel=-3),
        dict(affine_degrees=-5.0),
        dict(affine_scale=[0.0, 1.0]),
        dict(interpolation="bicubic"),
        dict(binarize=1.5),
        dict(normalize=True),
        dict(normalize=True, mean=[0.5], std=[0.5, 0.5]),
        dict(normalize=True, mean=[0.5], std=[0.0]),
    ],
)
def test_validate_rejects_bad_values(kwargs: dict) -> None:
    cfg = AugmentConfig(**kwargs)
    with pytest.raises(ConfigError):
        cfg.validate()


def test_construction_errors() -> None:
    AugmentConfig(**SIMCLR).validate()  # a valid config passes
    with pytest.raises(ConfigError):  # mean/std length vs channels
        BatchAugment(AugmentConfig(normalize=True, mean=[0.5], std=[0.5]), (3, 8, 8))
    with pytest.raises(ConfigError):  # colour ops need 1 or 3 channels
        BatchAugment(AugmentConfig(jitter=[0.4, 0, 0, 0], jitter_prob=1.0), (4, 8, 8))
    with pytest.raises(ConfigError):  # reflect padding needs kernel // 2 < side
        BatchAugment(AugmentConfig(blur_prob=0.5, blur_kernel=9), (3, 4, 4))


def test_simclr_pipeline_with_blur_and_solarize_runs_and_is_in_range() -> None:
    cfg = AugmentConfig(**SIMCLR, blur_prob=0.5, solarize_prob=0.2, vflip=0.1)
    aug = BatchAugment(cfg, (3, 32, 32))
    out = aug.views(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), 2, _gen(3))
    assert out.shape == (32, 3, 32, 32)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert math.isfinite(float(out.std())) and out.std() > 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=_gen(23))
    cfg = AugmentConfig(**SIMCLR, blur_prob=0.5, solarize_prob=0.2, affine_degrees=10)
    aug = BatchAugment(cfg, (3, 32, 32), out_size=24)
    cpu = aug(x, _gen(5))
    gpu = aug(x.cuda(), _gen(5))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
