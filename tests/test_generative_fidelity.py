"""SimVAE and AAVAE presets against the released code: parameter counts computed by hand from the
original layer definitions, stage sizes, initialisation, BatchNorm statistics, preprocessing of
evaluation inputs, the STL-10 clean image, the released evaluation protocol and the GMM probe.

The formulas below are written from the released files named next to them (alicebizeul/simvae,
Lightning-Universe/paper-AAVAE), not from selfsup's code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.utils.data import BatchSampler

from selfsup import pipelines
from selfsup.config import load_yaml, preset_path
from selfsup.data.augment import AugmentConfig, BatchAugment
from selfsup.data.base import DataInfo
from selfsup.data.preprocess import DATASET_STATS
from selfsup.evaluate.gmm import cluster_accuracy, gmm_clustering
from selfsup.evaluate.released_protocol import released_protocol_probe
from selfsup.methods import method_class
from selfsup.nets.decoders import AAVAEResNetDecoder, SimVAEResNetDecoder, TransposedBlock
from selfsup.nets.slim_resnet import SlimResNetEncoder


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _method(name: str, dataset: str, shape: tuple[int, int, int], **sets: object):
    overrides = ["trainer.online_probe=false", *(f"{k}={v}" for k, v in sets.items())]
    config = pipelines.build_config(name, dataset, sets=overrides)
    return method_class(name)(config, DataInfo(dataset, shape, 10, True))


# ------------------------------------------------------------------- released parameter counts
def _bn(c: int) -> int:
    return 2 * c


def simvae_decoder_params(z: int, size: int, nc: int) -> tuple[int, int]:
    """(parameters used in the forward pass, unused ones) of ResNetDec18 (decoders.py:82-173),
    built with layers [2, 2, 2, 2] (models.py:184). Bottleneck18(inp, planes): conv3 = tconv3x3
    (inp -> planes), bn3, conv1 = tconv3x3(planes -> planes), bn1, and with stride 2 the
    ``upsample`` tconv1x1(inp -> planes) + BN; all convolutions bias-free."""
    final_kernel = {32: 4, 64: 16}[size]
    n = z * final_kernel * 512 + final_kernel * 512  # self.linear

    def block(inp: int, planes: int, upsample: bool) -> int:
        p = inp * planes * 9 + _bn(planes) + planes * planes * 9 + _bn(planes)
        return p + (inp * planes + _bn(planes) if upsample else 0)

    for planes in (256, 128, 64):  # layer4, layer3, layer2: inplanes = planes * expansion 2
        inp = 2 * planes
        n += block(inp, inp, False) + block(inp, planes, True)
    n += 2 * block(64, 64, False)  # layer1: expansion=False, stride 1
    n += 64 * nc * 49 + nc  # conv1 = ConvTranspose2d(64, nc, 7), with bias
    return n, _bn(3)  # self.bn1 = BatchNorm2d(3) is never called in forward


def simvae_encoder_params(z: int, size: int, nc: int) -> int:
    """Encoder of models.py:137-147 over resnet.py:99-198 (resnet18_model: BasicBlock, widths
    32, 64, 128, 256, layer4 and fc dropped): conv1 replaced by a 3x3 conv with bias (32 px) or a
    4x4 conv without (64 px); every stage's first block has a 1x1 conv + BN downsample."""
    n = nc * 64 * 9 + 64 if size <= 32 else nc * 64 * 16
    n += _bn(64)
    inp = 64
    for planes in (32, 64, 128):
        n += inp * planes * 9 + _bn(planes) + planes * planes * 9 + _bn(planes)
        n += inp * planes + _bn(planes)  # downsample
        n += 2 * (planes * planes * 9 + _bn(planes))  # second block
        inp = planes
    feat = 512 * (16 if size == 64 else 4)
    return n + feat * 2 * z + 2 * z  # head_c


def mlp_params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def resnet_params(block: str, layers: list[int], stem: str) -> int:
    """paper-AAVAE src/models/resnet.py:131-269 (torchvision's ResNet, no fc): conv1 bias-free
    (3x3 for CIFAR, 7x7 for STL), BN; downsample conv1x1 + BN where the shape changes."""
    n = 3 * 64 * (9 if stem == "cifar" else 49) + _bn(64)
    exp = 1 if block == "basic" else 4
    inp = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for b in range(blocks):
            stride = 2 if (b == 0 and i > 0) else 1
            if block == "basic":
                n += inp * planes * 9 + _bn(planes) + planes * planes * 9 + _bn(planes)
            else:
                n += inp * planes + _bn(planes) + planes * planes * 9 + _bn(planes)
                n += planes * planes * exp + _bn(planes * exp)
            if b == 0 and (stride != 1 or inp != planes * exp):
                n += inp * planes * exp + _bn(planes * exp)
            inp = planes * exp
    return n


def aavae_decoder_params(block: str, layers: list[int], h: int, latent: int = 128) -> int:
    """paper-AAVAE src/models/decoder.py:130-227: linear_projection1/2, conv1 = conv1x1(h/16, h),
    four layers (planes 256, 128, 64, 32) whose first block has an ``upsample`` conv1x1 (every
    layer gets an Interpolate), conv2 = conv3x3(32 * expansion, 64), final_conv = conv3x3(64, 3);
    all convolutions with bias."""
    n = latent * h + h + h * h + h + (h // 16) * h + h
    exp = 1 if block == "basic" else 4
    inp = h
    for planes, blocks in zip((256, 128, 64, 32), layers, strict=True):
        for b in range(blocks):
            i = inp if b == 0 else planes * exp
            if block == "basic":
                n += i * planes * 9 + planes + planes * planes * 9 + planes
            else:
                n += i * planes + planes + planes * planes * 9 + planes
                n += planes * planes * exp + planes * exp
            if b == 0:
                n += i * planes * exp + planes * exp
        inp = planes * exp
    return n + 32 * exp * 64 * 9 + 64 + 64 * 3 * 9 + 3


def aavae_head_params(h: int, latent: int = 128) -> int:
    """ProjectionHeadVAE (src/models/projection.py): Linear(h, h), BN(h), two bias-free
    Linear(h, latent); plus the log_scale parameter (src/vae.py:128)."""
    return h * h + h + _bn(h) + 2 * h * latent + 1


@pytest.mark.parametrize("size,nc,z", [(32, 3, 64), (64, 3, 64)])
def test_simvae_resnet_networks_have_the_released_parameter_counts(size, nc, z) -> None:
    used, unused = simvae_decoder_params(z, size, nc)
    dec = SimVAEResNetDecoder(z, image_size=size, out_channels=nc)
    assert _count(dec) == used  # the released decoder also holds an unused BatchNorm2d(3)
    assert unused == 6
    enc = SlimResNetEncoder((nc, size, size), out_dim=2 * z)
    assert _count(enc) == simvae_encoder_params(z, size, nc)


def test_simvae_presets_have_the_released_parameter_counts() -> None:
    for dataset, shape in (("cifar10", (3, 32, 32)), ("celeba", (3, 64, 64))):
        m = _method("simvae", dataset, shape)
        z = m.config.model.latent_dim
        assert _count(m.encoder) == simvae_encoder_params(z, shape[1], 3)
        assert _count(m.decoder) == simvae_decoder_params(z, shape[1], 3)[0]
    for dataset in ("mnist", "fashionmnist"):
        m = _method("simvae", dataset, (1, 28, 28))
        # models.py:149-157, 185-193: m_dims[::-1] + [2z] and m_dims + [784], m_dims 500-500-2000
        assert _count(m.encoder) == mlp_params([784, 2000, 500, 500, 20])
        assert _count(m.decoder) == mlp_params([10, 500, 500, 2000, 784])


def test_simvae_decoder_stage_sizes_and_skips() -> None:
    dec = SimVAEResNetDecoder(8, image_size=32, out_channels=3).eval()
    sizes = []
    for stage in dec.stages:
        stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = dec(torch.randn(2, 8))
    assert sizes == [(256, 4, 4), (128, 8, 8), (64, 16, 16), (64, 16, 16)]
    assert out.shape == (2, 3, 32, 32)
    blocks = [b for stage in dec.stages for b in stage]
    assert [b.skip is not None for b in blocks] == [False, True] * 3 + [False, False]
    # A block without upsampling has no identity path: with its residual branch zeroed
    # (bn2 weight = bias = 0) it outputs relu(0) = 0; an identity skip would give relu(x).
    block = blocks[0]
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
        x = torch.rand(2, 512, 2, 2) + 0.1
        assert torch.equal(block.eval()(x), torch.zeros_like(x))
        up = TransposedBlock(4, 2, upsample=True).eval()
        up.bn2.weight.zero_()
        up.bn2.bias.zero_()
        assert up(torch.rand(1, 4, 3, 3)).abs().sum() > 0  # the upsampling block keeps its skip


def test_slim_resnet_init_is_kaiming_fan_out_except_the_stem() -> None:
    torch.manual_seed(0)
    enc = SlimResNetEncoder((3, 32, 32), out_dim=128)
    convs = [m for m in enc.layers.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 15  # 3 stages x (2 blocks x 2 convs + 1 downsample)
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected = math.sqrt(2.0 / fan_out)
        if conv.weight.numel() >= 16384:  # enough samples for a 3% check of the std
            assert float(conv.weight.std()) == pytest.approx(expected, rel=0.03)
        assert float(conv.weight.abs().max()) > math.sqrt(3.0) * expected  # normal, not uniform
    stem = enc.stem[0]  # replaced after the released init loop: PyTorch's default U(-b, b)
    bound = 1.0 / math.sqrt(3 * 9)
    assert float(stem.weight.abs().max()) <= bound
    assert float(stem.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    for bn in (m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


# ------------------------------------------------------------------------------------- AAVAE
@pytest.mark.parametrize(
    "dataset,shape,stem", [("cifar10", (3, 32, 32), "cifar"), ("stl10", (3, 96, 96), "stl")]
)
def test_aavae_presets_have_the_released_parameter_counts(dataset, shape, stem) -> None:
    m = _method("aavae", dataset, shape)
    assert _count(m.backbone) == resnet_params("bottleneck", [3, 4, 6, 3], stem)
    assert _count(m.decoder) == aavae_decoder_params("bottleneck", [3, 6, 4, 3], 2048)
    assert _count(m.head) + m.log_scale.numel() == aavae_head_params(2048)
    assert _count(m) == (
        resnet_params("bottleneck", [3, 4, 6, 3], stem)
        + aavae_decoder_params("bottleneck", [3, 6, 4, 3], 2048)
        + aavae_head_params(2048)
    )


def test_aavae_resnet18_and_34_decoders_are_paired_as_released() -> None:
    for name, layers in (("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 6, 4, 3])):
        with torch.device("meta"):
            dec = AAVAEResNetDecoder(128, 512, 32, 3, blocks="basic", layers=layers)
        assert _count(dec) == aavae_decoder_params("basic", layers, 512), name
    m = _method("aavae", "cifar10", (3, 32, 32), **{"model.encoder": "resnet18"})
    assert _count(m.decoder) == aavae_decoder_params("basic", [2, 2, 2, 2], 512)


@pytest.mark.parametrize(
    "size,stem,sides", [(32, "cifar", [4, 8, 16, 32]), (96, "stl", [6, 12, 24, 48])]
)
def test_aavae_decoder_stage_sides(size, stem, sides) -> None:
    for blocks in ("basic", "bottleneck"):
        dec = AAVAEResNetDecoder(8, 64, size, 3, blocks=blocks, layers=[1, 1, 1, 1], stem=stem)
        seen: list[int] = []
        for stage in dec.stages:
            stage.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape[-1]))
        with torch.no_grad():
            out = dec(torch.randn(1, 8))
        assert seen == sides == dec.stage_sides()
        assert out.shape == (1, 3, size, size)


def _bn_stats(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [
        t.clone()
        for mod in modules
        for m in mod.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for t in (m.running_mean, m.running_var)
    ]


@pytest.mark.parametrize("clean_pass", [True, False])
def test_aavae_batchnorm_statistics_follow_the_clean_then_augmented_passes(clean_pass) -> None:
    sets = {"model.encoder": "conv", "model.decoder": "conv", "model.width": 8,
            "model.latent_dim": 8, "model.clean_pass": clean_pass}
    torch.manual_seed(0)
    m = _method("aavae", "cifar10", (3, 32, 32), **sets).train()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    ref_backbone, ref_head = copy.deepcopy(m.backbone), copy.deepcopy(m.head)
    m.step_generator.manual_seed(5)
    m.training_loss(images)
    gen = torch.Generator().manual_seed(5)
    x_aug = m.augment(images, generator=gen)
    x_clean = m.preprocess(images)
    with torch.no_grad():
        order = [x_clean, x_aug] if clean_pass else [x_aug]
        for x in order:
            ref_head(ref_backbone(x))
    expected = _bn_stats([ref_backbone, ref_head])
    for got, want in zip(_bn_stats([m.backbone, m.head]), expected, strict=True):
        torch.testing.assert_close(got, want)
    if clean_pass:  # the order matters: augmented first gives other running statistics
        torch.manual_seed(0)
        other = _method("aavae", "cifar10", (3, 32, 32), **sets).train()
        with torch.no_grad():
            for x in (x_aug, x_clean):
                other.head(other.backbone(x))
        swapped = _bn_stats([other.backbone, other.head])
        diff = [float((a - b).abs().max()) for a, b in zip(swapped, expected, strict=True)]
        assert max(diff) > 1e-4


def test_aavae_stl10_clean_image_is_resize_105_center_crop_96() -> None:
    sets = {"model.encoder": "conv", "model.decoder": "conv", "model.width": 8,
            "model.latent_dim": 8}
    m = _method("aavae", "stl10", (3, 96, 96), **sets).eval()
    assert m.config.augment.clean_resize == 105
    images = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    mean, std = DATASET_STATS["stl10"]
    ref = TF.center_crop(TF.resize(images.float() / 255, 105, antialias=True), [96, 96])
    ref = TF.normalize(ref, list(mean), list(std))
    torch.testing.assert_close(m.preprocess(images), ref, atol=5e-5, rtol=0)  # 1e-5 / std
    # the linear-evaluation input is the same clean image
    torch.testing.assert_close(m.represent(images), m.encode(ref), atol=1e-4, rtol=1e-4)
    # and so is the reconstruction target: the loss equals the Gaussian log-likelihood of ref
    m.train()
    m.step_generator.manual_seed(3)
    torch.manual_seed(3)
    terms = m.training_loss(images)
    m.step_generator.manual_seed(3)
    torch.manual_seed(3)
    x_in = m.augmented(images)
    with torch.no_grad():
        m.posterior(m.preprocess(images))  # the clean pass comes first (no noise drawn)
        mu, logvar = m.posterior(x_in)
        z = m.rsample(mu, logvar)
        x_hat = m.decoder(z)
    log_lik = torch.distributions.Normal(x_hat, 1.0 + 1e-6).log_prob(ref).sum(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"].detach(), -log_lik.mean(), rtol=1e-5, atol=1e-3)


def test_normalisation_statistics_are_declared_once() -> None:
    for dataset in ("cifar10", "stl10"):
        assert "mean" not in load_yaml(preset_path("aavae", dataset)).get("augment", {})
        config = pipelines.build_config("aavae", dataset)
        mean, std = DATASET_STATS[dataset]
        assert config.augment.mean == pytest.approx(list(mean))
        assert config.augment.std == pytest.approx(list(std))
    assert DATASET_STATS["cifar10"][0][0] == pytest.approx(125.3 / 255)


# ----------------------------------------------------------------------- binarized evaluation
def test_evaluation_inputs_are_binarized_where_training_views_are() -> None:
    m = _method("simvae", "mnist", (1, 28, 28)).eval()
    assert m.config.augment.binarize == 0.5
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    binary = (images.float() / 255 > 0.5).float()
    torch.testing.assert_close(m.preprocess(images), binary, atol=0, rtol=0)
    torch.testing.assert_close(m.represent(images), m.encode(binary), atol=0, rtol=0)
    recon_input = m.augment.preprocessing.to_unit_range(m.preprocess(images))
    assert set(recon_input.unique().tolist()) <= {0.0, 1.0}  # the plotted input row
    views = m.views(images, 2)
    assert set(views.unique().tolist()) <= {0.0, 1.0}


def test_one_declaration_drives_training_views_and_evaluation_inputs() -> None:
    sets = {"augment.binarize": 0.3, "augment.crop_scale": "[1.0,1.0]", "augment.vflip": 0.0,
            "augment.normalize": True, "augment.mean": "[0.2]", "augment.std": "[0.5]"}
    m = _method("simvae", "mnist", (1, 28, 28), **sets)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    expected = ((images.float() / 255 > 0.3).float() - 0.2) / 0.5
    torch.testing.assert_close(m.preprocess(images), expected, atol=0, rtol=0)
    views = m.views(images, 2)  # identity augmentation: each view is the evaluation input
    torch.testing.assert_close(views, expected.repeat_interleave(2, dim=0), atol=0, rtol=0)


# --------------------------------------------------------------- SimVAE CIFAR augmentation order
def test_simvae_cifar_augmentation_matches_torchvision_in_the_released_order() -> None:
    config = pipelines.build_config("simvae", "cifar10")
    cfg = config.augment
    assert (cfg.pre_resize, cfg.jitter_first, cfg.jitter_prob) == (256, True, 1.0)
    aug = BatchAugment(cfg, (3, 32, 32))
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = aug.sample_params(6, torch.Generator().manual_seed(1))
    assert p["vflip"].any() and (~p["vflip"]).any()
    out = aug.apply(x, p)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for n in range(6):
        img = TF.resize(x[n], [256, 256], antialias=True)  # Resize((256, 256))
        for k in p["jitter_order"][n].tolist():  # ColorJitter, always applied
            img = ops[k](img, float(p["jitter_factors"][n, k]))
        top, left, h, w = p["box"][n].tolist()  # RandomResizedCrop(32) of the 256 px image
        assert h * w >= 0.6 * 256 * 256 * 0.99
        img = TF.resized_crop(img, top, left, h, w, [32, 32], antialias=True)
        if p["vflip"][n]:
            img = TF.vertical_flip(img)
        torch.testing.assert_close(out[n], img, atol=1e-5, rtol=0)


def test_jitter_first_without_resize_matches_torchvision() -> None:
    cfg = AugmentConfig(jitter=[0.8, 0.8, 0.8, 0.2], jitter_prob=1.0, jitter_first=True,
                        crop_scale=[0.3, 1.0])
    aug = BatchAugment(cfg, (3, 32, 32), 24)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    p = aug.sample_params(4, torch.Generator().manual_seed(3))
    out = aug.apply(x, p)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for n in range(4):
        img = x[n]
        for k in p["jitter_order"][n].tolist():
            img = ops[k](img, float(p["jitter_factors"][n, k]))
        top, left, h, w = p["box"][n].tolist()
        img = TF.resized_crop(img, top, left, h, w, [24, 24], antialias=False)
        torch.testing.assert_close(out[n], img, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------- evaluation protocol
def _blobs(n: int, seed: int, d: int = 6, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=2.5, random_state=seed,
                      center_box=(-6, 6))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_released_protocol_matches_an_independent_training_loop(head) -> None:
    tx, ty = _blobs(200, 0)
    vx, vy = _blobs(90, 0)
    res = released_protocol_probe(tx, ty, vx, vy, head=head, epochs=30, seed=3, device="cpu")
    # Reference: heads of models.py:24-47, Adam(lr 3e-4), shuffled batches of 64 with drop_last
    # (data_loader.py:508-514) and CrossEntropyLoss(reduction="sum") (main.py:186-212); the test
    # split scored after each epoch.
    torch.manual_seed(3)
    d = tx.shape[1]
    model = nn.Linear(d, 3) if head == "linear" else nn.Sequential(
        nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 3))
    assert _count(model) == (d * 3 + 3 if head == "linear" else d * d + d + d * 3 + 3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(3)  # one shuffle per epoch, last incomplete batch dropped
    history = []
    for _ in range(30):
        batches = BatchSampler(torch.randperm(200, generator=gen).tolist(), 64, drop_last=True)
        for idx in batches:
            xb, yb = tx[idx], ty[idx]
            opt.zero_grad()
            nn.CrossEntropyLoss(reduction="sum")(model(xb), yb).backward()
            opt.step()
        with torch.no_grad():
            history.append(float((model(vx).argmax(1) == vy).double().mean()))
    assert len(set(history)) > 1  # the accuracy moves, so the comparison means something
    assert res["test_accuracy_per_epoch"] == pytest.approx(history, abs=1e-9)
    assert res["accuracy"] == max(history) and res["final_accuracy"] == history[-1]
    assert res["selection"] == "test" and "test" in res["warning"]


def test_released_protocol_through_pipelines_and_cli_names() -> None:
    from selfsup.report import eval_name

    m = _method("vae", "digits", (1, 8, 8))
    tx, ty = _blobs(128, 1)
    feats = pipelines.Features(tx, ty, tx[:40], ty[:40])
    res = pipelines.evaluate(m, "mlp", features=feats,
                             probe_options={"protocol": "released", "epochs": 2})
    assert res["protocol"] == "released" and res["probe"] == "mlp" and res["epochs"] == 2
    assert eval_name("mlp", {"protocol": "released"}) == "mlp-released"
    assert eval_name("linear", {"protocol": "released"}) == "linear-released"
    assert eval_name("mlp", {}) == "mlp"


def test_gmm_is_fit_on_train_and_scored_on_test() -> None:
    tx, ty = _blobs(300, 4)
    vx, vy = _blobs(120, 5)
    vy = vy.clone()
    vy[:10] = -1  # unlabeled test rows are not scored
    res = gmm_clustering(tx, ty, vx, vy, n_init=3, seed=1)
    mean, std = tx.double().mean(0), tx.double().std(0, unbiased=False)
    gmm = GaussianMixture(3, covariance_type="diag", n_init=3, random_state=1)
    gmm.fit(((tx.double() - mean) / std).numpy())
    pred = gmm.predict(((vx.double() - mean) / std).numpy())[10:]
    truth = vy[10:].numpy()
    assert res["fit_on"] == "train, scored on test" and res["n_samples"] == 110
    assert res["cluster_accuracy"] == pytest.approx(cluster_accuracy(truth, pred))
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pred), abs=1e-9)
    assert res["ari"] == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-9)
    # the pipeline passes train and test features
    m = _method("vae", "digits", (1, 8, 8))
    out = pipelines.evaluate(m, "gmm", features=pipelines.Features(tx, ty, vx, vy),
                             probe_options={"n_init": 3}, seed=1)
    assert out["cluster_accuracy"] == res["cluster_accuracy"] and out["n_fit"] == 300


def test_cli_eval_mlp_and_linear_protocol_released(tmp_path, capsys) -> None:
    import json

    from conftest import tiny_vae_flags
    from selfsup.cli import main

    run = tmp_path / "run"
    pipelines.train(pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1)), run)
    capsys.readouterr()
    for probe in ("mlp", "linear"):
        argv = ["eval", probe, "--run", str(run), "--protocol", "released", "--epochs", "2",
                "--lr", "1e-3", "--json"]
        assert main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["protocol"] == "released" and result["lr"] == 1e-3
        assert len(result["test_accuracy_per_epoch"]) == 2
        assert (run / "eval" / f"{probe}-released.json").is_file()
    assert main(["eval", "knn", "--run", str(run), "--protocol", "released"]) == 2
    assert "--protocol" in capsys.readouterr().err


def test_simvae_presets_sum_the_loss_over_the_batch_as_released() -> None:
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    totals = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        m = _method("simvae", "mnist", (1, 28, 28), **{"model.batch_reduction": reduction})
        m.step_generator.manual_seed(1)
        torch.manual_seed(1)
        with torch.no_grad():
            totals[reduction] = m.training_loss(images)
    assert pipelines.build_config("simvae", "mnist").model.batch_reduction == "sum"
    for key in ("loss", "reconstruction"):
        torch.testing.assert_close(totals["sum"][key], 8 * totals["mean"][key])


def test_speed_reference_pipeline_follows_the_simvae_cifar_order() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.speed import reference

    augment = pipelines.build_config("simvae", "cifar10").augment
    kinds = [type(t).__name__ for t in reference.torchvision_transform(augment, 32).transforms]
    assert kinds == ["Resize", "RandomApply", "RandomResizedCrop", "RandomVerticalFlip", "ToTensor"]
