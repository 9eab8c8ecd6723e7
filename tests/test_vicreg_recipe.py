"""The VICReg CIFAR-10 presets against the released code they follow, fact by fact.

augustwester/vicreg (commit 89eab04): model.py, loss.py, train.py, eval.py;
solo-learn (commit 9187ea3): scripts/pretrain/cifar/vicreg.yaml, solo/methods/{base,vicreg}.py,
solo/losses/vicreg.py. The expected values below are written from those files (cited per test),
not from our code.
"""

from __future__ import annotations

import copy
import math
from importlib.resources import files

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from fixtures import write_cifar10
from selfsup import pipelines
from selfsup.cli import main
from selfsup.data.augment import BatchAugment
from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.evaluate.linear_protocol import augmented_linear_protocol, augmented_sgd
from selfsup.losses.vicreg import vicreg_loss
from selfsup.methods import method_class

CIFAR = DataInfo("cifar10", (3, 32, 32), 10, True)
SOLO_FILE = str(files("selfsup") / "configs" / "vicreg" / "cifar10-solo.yaml")


def _config(solo: bool = False, **model: object):
    flags = {"model": model} if model else None
    return pipelines.build_config("vicreg", "cifar10", config_file=SOLO_FILE if solo else None,
                                  flags=flags)


def _method(solo: bool = False, **model: object):
    torch.manual_seed(0)
    return method_class("vicreg")(_config(solo, **model), CIFAR)


# ----------------------------------------------------------------- parameter counts by formula
def conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias


def linear(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def resnet18_body() -> int:
    """torchvision ResNet-18 after the stem conv: bn1, then 4 stages of 2 BasicBlocks (two 3x3
    convs + BN each) of widths 64, 128, 256, 512, the first block of stages 2-4 with a strided
    1x1 conv + BN shortcut."""
    total, c_in = bn(64), 64
    for width in (64, 128, 256, 512):
        for block in range(2):
            total += conv(c_in, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if block == 0 and c_in != width:
                total += conv(c_in, width, 1) + bn(width)
            c_in = width
    return total


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_augustwester_model_py():
    # model.py:34-36: resnet18(num_classes=512) with conv1 = Conv2d(3, 64, (3, 3), stride=1)
    # (bias on) and no max-pool; model.py:9-20: 512-1024 then three 1024-1024 linears, BN+ReLU
    # after the first three, every Linear with a bias.
    encoder = conv(3, 64, 3, bias=True) + resnet18_body() + linear(512, 512)
    projector = (linear(512, 1024) + bn(1024) + 2 * (linear(1024, 1024) + bn(1024))
                 + linear(1024, 1024))
    assert (encoder, projector) == (11_431_552, 3_680_256)
    method = _method()
    assert _count(method.backbone) == encoder
    assert _count(method.projector) == projector
    assert sum(isinstance(m, nn.Linear) for m in method.projector) == 4


def test_parameter_counts_equal_solo_learn():
    # methods/base.py:197-203: fc removed, conv1 = Conv2d(3, 64, 3, 1, padding=2, bias=False);
    # methods/vicreg.py:53-61: 512-2048-2048-2048 with BN+ReLU after the first two, biases on.
    encoder = conv(3, 64, 3) + resnet18_body()
    projector = linear(512, 2048) + bn(2048) + linear(2048, 2048) + bn(2048) + linear(2048, 2048)
    method = _method(solo=True)
    assert _count(method.backbone) == encoder == 11_168_832
    assert _count(method.projector) == projector == 9_451_520


@pytest.mark.parametrize(("solo", "side"), [(False, 30), (True, 34)])
def test_stem_geometry_and_representation(solo: bool, side: int):
    """Padding 0 maps 32 px to 30 px (augustwester), padding 2 to 34 px (solo-learn); the
    representation is the fc output (augustwester eval.py:47 reads model.encoder(images))."""
    method = _method(solo)
    seen = {}
    method.backbone.conv1.register_forward_hook(lambda m, i, o: seen.update(stem=o.shape))
    method.backbone.avgpool.register_forward_hook(lambda m, i, o: seen.update(pool=o))
    x = torch.rand(2, 3, 32, 32)
    method.eval()
    h = method.encode(x)
    assert seen["stem"][-2:] == (side, side)
    pooled = seen["pool"].flatten(1)
    if solo:
        assert isinstance(method.backbone.fc, nn.Identity)
        torch.testing.assert_close(h, pooled)
    else:
        assert isinstance(method.backbone.fc, nn.Linear) and method.backbone.fc.bias is not None
        torch.testing.assert_close(h, method.backbone.fc(pooled))
    assert h.shape == (2, 512) and method.feature_dim == 512


def test_stem_initialisation_is_nn_conv2d_default():
    """A conv created after the ResNet keeps nn.Conv2d's init: U(-1/sqrt(fan_in), +) for weight
    and bias, std bound / sqrt(3); torchvision's own init is N(0, 2 / fan_out)."""
    bound = 1 / math.sqrt(27)
    conv1 = _method().backbone.conv1
    assert conv1.weight.abs().max() <= bound and conv1.bias.abs().max() <= bound
    assert abs(float(conv1.weight.std()) - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
    ours = _method(stem_init="kaiming", stem_padding=None, stem_bias=False).backbone.conv1
    assert abs(float(ours.weight.std()) - math.sqrt(2 / 576)) < 0.1 * math.sqrt(2 / 576)


# ------------------------------------------------------------------------- augmentations
def test_augmentations_are_train_py_list():
    """train.py:17-26: ToTensor, RandomResizedCrop(32, (0.2, 1)), RandomHorizontalFlip(0.5),
    RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], 0.8), RandomGrayscale(0.2),
    RandomApply([GaussianBlur(3)], 0.5) (sigma (0.1, 2.0), torchvision's default),
    RandomSolarize(0.5, p=0.2), Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))."""
    a = _config().augment
    facts = {
        "crop_scale": [0.2, 1.0], "crop_ratio": [3 / 4, 4 / 3], "crop_prob": 1.0, "hflip": 0.5,
        "vflip": 0.0, "jitter": [0.4, 0.4, 0.2, 0.1], "jitter_prob": 0.8, "grayscale": 0.2,
        "blur_prob": 0.5, "blur_kernel": 3, "blur_sigma": [0.1, 2.0], "solarize_prob": 0.2,
        "affine_degrees": 0.0, "interpolation": "bilinear", "binarize": None, "normalize": True,
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261],
    }
    for key, value in facts.items():
        assert getattr(a, key) == pytest.approx(value), key
    # sampled rates of every random choice
    aug = BatchAugment(a, (3, 32, 32))
    p = aug.sample_params(20000, torch.Generator().manual_seed(0))
    for key, rate in (("hflip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5),
                      ("solarize", 0.2)):
        assert abs(float(p[key].float().mean()) - rate) < 0.015, key
    assert 0.1 <= float(p["sigma"].min()) and float(p["sigma"].max()) <= 2.0
    assert aug.blur_kernel == 3


def test_blur_solarize_normalize_order_and_values_match_torchvision():
    """Blur (kernel 3) then solarize (threshold 0.5) then normalise, as train.py:23-25."""
    aug = BatchAugment(_config().augment, (3, 32, 32))
    n = 6
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    p = aug.sample_params(n, torch.Generator().manual_seed(2))
    p["box"] = torch.tensor([[0, 0, 32, 32]] * n)
    for key in ("hflip", "jitter", "grayscale"):
        p[key] = torch.zeros(n, dtype=torch.bool)
    p["blur"] = p["solarize"] = torch.ones(n, dtype=torch.bool)
    out = aug.apply(x, p)
    for i in range(n):
        ref = TF.gaussian_blur(x[i], [3, 3], [float(p["sigma"][i])] * 2)
        ref = TF.normalize(TF.solarize(ref, 0.5), [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261])
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)


# --------------------------------------------------------------------------------- loss
def _augustwester_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """loss.py:4-15 and train.py:57-61, written out: 25 inv + 25 (var1 + var2) + (cov1 + cov2)."""

    def variance(z):
        return torch.relu(1 - z.std(0)).mean()

    def covariance(z):
        n, d = z.shape
        c = (z - z.mean(0)).T @ (z - z.mean(0)) / (n - 1)
        return (c.pow(2).sum() - c.diag().pow(2).sum()) / d

    inv = ((z1 - z2) ** 2).mean()
    return 25 * inv + 25 * (variance(z1) + variance(z2)) + covariance(z1) + covariance(z2)


def test_loss_on_a_known_pair_by_hand():
    """z_a = [[1, 1], [-1, -1]]: std sqrt(2) > 1 in both columns (hinge 0), Cov = [[2, 2], [2, 2]]
    (off-diagonal squares 8, / d = 4). z_b = [[0.5, 0], [-0.5, 0]]: stds sqrt(0.5) and 0 (hinge
    mean (1 - sqrt(0.5) + 1) / 2), no covariance. MSE = (0.25 + 1 + 0.25 + 1) / 4 = 0.625."""
    z_a = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    z_b = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    hinge_b = (1 - math.sqrt(0.5) + 1) / 2
    recipe = 25 * 0.625 + 25 * (0 + hinge_b) + (4 + 0)  # augustwester train.py:61
    method = _method()
    got = method.pair_loss(z_a, z_b)
    assert float(got["loss"]) == pytest.approx(recipe, rel=1e-6)
    assert float(got["variance"]) == pytest.approx(hinge_b / 2, rel=1e-6)  # facebook's mean
    assert float(_augustwester_loss(z_a, z_b)) == pytest.approx(recipe, rel=1e-6)
    # facebookresearch/vicreg main_vicreg.py:205-219: eps 1e-4, halved, std_coeff 25
    hinge_b_fb = ((1 - math.sqrt(0.5 + 1e-4)) + (1 - math.sqrt(1e-4))) / 2
    facebook = 25 * 0.625 + 25 * (0 + hinge_b_fb) / 2 + 4
    assert float(vicreg_loss(z_a, z_b)["loss"]) == pytest.approx(facebook, rel=1e-6)
    # solo-learn losses/vicreg.py:52-55, 113: eps 1e-4, summed, var_loss_weight 25
    solo = 25 * 0.625 + 25 * (0 + hinge_b_fb) + 4
    assert float(_method(solo=True).pair_loss(z_a, z_b)["loss"]) == pytest.approx(solo, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_equal_augustwester_formula(seed: int):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(64, 32, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, 32)
    z2 = 0.6 * z1 + 0.5 * torch.randn(64, 32, generator=g, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    b1, b2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ours = _method().pair_loss(a1, a2)["loss"]
    ref = _augustwester_loss(b1, b2)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a1.grad, b1.grad)
    torch.testing.assert_close(a2.grad, b2.grad)


# ---------------------------------------------------------------- concatenated batch norm
def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("concat", [True, False])
def test_batch_norm_sees_both_views_as_one_batch(concat: bool):
    """concat_views: the running statistics after a step equal those of ONE pass of cat(x_a,
    x_b) through backbone and projector (augustwester model.py:41-43); without it, those of
    two passes, one per view."""
    method = _method(concat_views=concat, proj_dims=[64, 64])
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    method.step_generator.manual_seed(5)
    x_a, x_b = method.two_views(images)
    twin, other = copy.deepcopy(method), copy.deepcopy(method)
    with torch.no_grad():
        if concat:
            z_a, z_b = twin.projector(twin.backbone(torch.cat([x_a, x_b]))).chunk(2)
        else:
            z_a, z_b = (twin.projector(twin.backbone(x)) for x in (x_a, x_b))
    method.step_generator.manual_seed(5)
    terms = method.training_loss(images)
    for got, want in zip(_bn_stats(method), _bn_stats(twin), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(terms["loss"].detach(), method.pair_loss(z_a, z_b)["loss"])
    with torch.no_grad():  # the other mode gives other statistics
        if concat:
            other.backbone(x_a)
            other.backbone(x_b)
        else:
            other.backbone(torch.cat([x_a, x_b]))
    assert not torch.allclose(_bn_stats(other.backbone)[1], _bn_stats(twin.backbone)[1])


def test_concat_views_refused_by_methods_with_their_own_step():
    config = pipelines.build_config("byol", "digits", flags={"model": {"concat_views": True}})
    with pytest.raises(ConfigError, match="concat_views"):
        method_class("byol")(config, DataInfo("digits", (1, 8, 8), 10, True))
    with pytest.raises(ConfigError, match="ResNet"):
        method_class("vicreg")(
            pipelines.build_config("vicreg", "digits", flags={"model": {"backbone_fc": 8}}),
            DataInfo("digits", (1, 8, 8), 10, True),
        )


# ------------------------------------------------------------------------- optimizers
def test_pretraining_optimizers_match_the_recipes():
    # augustwester train.py:40: Adam(model.parameters(), lr=2e-4, weight_decay=1e-6), defaults
    # betas (0.9, 0.999), eps 1e-8, one group: every parameter decays, no schedule.
    method = _method()
    opt = method.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.Adam
    main_group = opt.param_groups[0]
    assert main_group["lr"] == 2e-4 and main_group["weight_decay"] == 1e-6
    assert main_group["betas"] == (0.9, 0.999) and main_group["eps"] == 1e-8
    assert len(main_group["params"]) == len(method.method_parameters())
    config = _config()
    assert (config.optim.schedule, config.data.batch_size, config.trainer.epochs) == (
        "constant", 256, 500)
    # solo-learn vicreg.yaml:58-69 + args/pretrain.py:153-164: LARS lr 0.3 * 256 / 256,
    # momentum 0.9, eta 0.02, wd 1e-4, biases and norms excluded, warmup 10 epochs from 3e-5.
    solo = _config(solo=True).optim
    assert (solo.name, solo.lr, solo.momentum, solo.lars_eta, solo.weight_decay) == (
        "lars", 0.3, 0.9, 0.02, 1e-4)
    assert solo.exclude_bias_and_norm and solo.scale_lr_by_batch
    assert (solo.schedule, solo.warmup_epochs, solo.min_lr) == ("warmup_cosine", 10, 0.0)
    assert solo.lr * solo.warmup_start_factor == pytest.approx(3e-5)


@pytest.mark.parametrize(("lr", "step"), [(0.3, 0.1), (0.05, 0.05)])
def test_solo_lars_clip_caps_the_layer_step_at_lr(lr: float, step: float):
    """solo/utils/lars.py:142-150 with clip_lr, weight decay 0: lars_lr = eta ||w|| / ||g||,
    clipped to min(lars_lr / lr, 1), update lr * lars_lr * g. ||w|| = 5, ||g|| = 1, eta 0.02:
    eta ||w|| / ||g|| = 0.1, so the step is min(0.1, lr) * g (momentum: first step = update)."""
    from selfsup.optim import LARS

    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    w.grad = torch.tensor([[0.6, 0.8]])
    LARS([w], lr=lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True).step()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - step * w.grad)
    assert _config(solo=True).optim.lars_clip and not _config().optim.lars_clip


# ------------------------------------------------------------------ linear evaluation
def test_eval_optimizer_is_plain_sgd_with_per_epoch_cosine():
    """eval.py:20-23, 54: SGD(lr=0.02, weight_decay=1e-6) (momentum 0, no Nesterov),
    CosineAnnealingLR(T_max=50) stepped once per epoch."""
    defaults = augmented_linear_protocol.__kwdefaults__
    assert (defaults["epochs"], defaults["base_lr"], defaults["batch_size"]) == (50, 0.02, 256)
    assert (defaults["weight_decay"], defaults["momentum"]) == (1e-6, 0.0)
    assert (tuple(defaults["crop_scale"]), defaults["hflip"]) == ((0.2, 1.0), 0.5)
    opt, schedule = augmented_sgd(nn.Linear(4, 2), 50, 0.02, 1e-6)
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and group["momentum"] == 0 and not group["nesterov"]
    assert group["weight_decay"] == 1e-6
    for epoch in range(50):
        assert group["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * epoch / 50)), abs=1e-12)
        schedule.step()


class _Recorder(nn.Module):
    """A frozen 'encoder' (8x8 average pooling, flattened) that records what it is given."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.inner = method
        self.info = method.info
        self.seen: list[torch.Tensor] = []

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.preprocess(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return nn.functional.avg_pool2d(x, 4).flatten(1)


def test_eval_trains_on_augmented_images_and_scores_clean_normalised_ones(tmp_path):
    data = write_cifar10(tmp_path, n_per_batch=8)
    config = _config()
    train = pipelines.load_split(config, "train", tmp_path)
    test = pipelines.load_split(config, "test", tmp_path)
    method = _method()
    probe = _Recorder(method)
    result = augmented_linear_protocol(probe, train, test, epochs=3, batch_size=40)
    assert result["lr_per_epoch"] == pytest.approx(
        [0.02 * 40 / 256 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    assert result["n_train"] == 40 and result["n_test"] == 8 and result["feature_dim"] == 192
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
    clean_test = torch.as_tensor(data["test"]["images"]).float() / 255
    torch.testing.assert_close(probe.seen[-1], (clean_test - mean) / std)
    train_batches = probe.seen[1:-1]  # [0] sizes the layer; 3 epochs x 1 batch of 40
    assert len(train_batches) == 3 and all(b.shape == (40, 3, 32, 32) for b in train_batches)
    assert not torch.allclose(train_batches[0], train_batches[1])  # fresh crops every epoch
    probe.seen.clear()
    augmented_linear_protocol(probe, train, test, epochs=1, batch_size=40, normalize_test=False)
    torch.testing.assert_close(probe.seen[-1], clean_test)  # the original's eval.py:35 bug


def test_eval_learns_separable_patterns_and_runs_from_the_pipeline(tmp_path):
    write_cifar10(tmp_path, n_per_batch=40)
    config = _config()
    train = pipelines.load_split(config, "train", tmp_path)
    test = pipelines.load_split(config, "test", tmp_path)
    probe = _Recorder(_method())
    trained = augmented_linear_protocol(probe, train, test, epochs=10, batch_size=32, base_lr=0.5)
    untrained = augmented_linear_protocol(probe, train, test, epochs=1, batch_size=32,
                                          base_lr=1e-6)
    assert trained["accuracy"] >= untrained["accuracy"] + 0.3, (trained, untrained)
    method = method_class("vicreg")(
        pipelines.build_config("vicreg", "cifar10", use_preset=False, flags={"model": {
            "backbone": "conv", "width": 4, "proj_dims": [16, 16]}}), CIFAR)
    result = pipelines.evaluate(method, "linear", tmp_path, probe_options={
        "protocol": "sgd-augmented", "epochs": 1, "batch_size": 100})
    assert result["protocol"] == "sgd-augmented-1-epochs" and result["n_test"] == 40
    assert 0.0 <= result["accuracy"] <= 1.0 and result["method"] == "vicreg"


def test_unnormalized_test_flag_needs_the_augmented_protocol(capsys):
    assert main(["eval", "linear", "--run", "nowhere", "--test-unnormalized"]) == 2
    assert "sgd-augmented" in capsys.readouterr().err
