"""Soft-discretization SSL presets against facts of the released code (lavoiems/SoftDiscrete_SSL):
parameter counts, the BYOL loss value, the VQ commitment weight, codebook rules and init, the
stochastic VQ, the target network's codebook, the held-out split rule and the preset values."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import random_split

from selfsup import pipelines
from selfsup.data import mpi3d
from selfsup.data.base import DataInfo
from selfsup.data.splits import factor_split_indices, released_heldout_split
from selfsup.errors import ConfigError
from selfsup.losses.byol import symmetric_byol_loss
from selfsup.methods import method_class
from selfsup.nets.bottleneck import VQBridge
from selfsup.nets.conv64 import Conv64Encoder
from selfsup.nets.ema import MomentumTarget


# ------------------------------------------------------------------ released parameter counts
def _conv(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out  # 3x3 kernel and bias


def released_encoder(channels: int, h_dim: int = 64, hidden: int = 128) -> int:
    """models/byol/model.py:18-40: three Conv-BN-ReLU, Conv, pool stages (BN: weight + bias)."""
    return (_conv(channels, h_dim) + 2 * h_dim + _conv(h_dim, 2 * h_dim)
            + _conv(2 * h_dim, 2 * h_dim) + 4 * h_dim + _conv(2 * h_dim, 2 * h_dim)
            + _conv(2 * h_dim, 2 * h_dim) + 4 * h_dim + _conv(2 * h_dim, hidden))


def released_heads(method: str, encode: str, hidden: int = 256, length: int = 256,
                   vocab: int = 32, dimz: int = 8) -> int:
    """Embedder + bridge + projector + predictor of byol / vq-byol / moco-simclr train.py's
    init_models with the launch scripts' sizes."""
    width = {"continuous": hidden, "vq": length * dimz}.get(encode, length * vocab)
    embedder = hidden * width + (2 * width if method == "byol" else 0)  # moco: no BatchNorm
    bridge = vocab * dimz if encode == "vq" else 0
    projector = width * 1024 + 1024 + 2 * 1024 + 1024 * hidden + 2 * hidden
    predictor = hidden * hidden
    return embedder + bridge + projector + predictor


def test_conv64_has_the_released_665k_parameters():
    for shape, kwargs, count in (((1, 64, 64), {}, 665_472), ((1, 64, 64), {"out_dim": 256}, None),
                                 ((3, 64, 64), {"out_dim": 256}, None)):
        net = Conv64Encoder(shape, **kwargs)
        n = sum(p.numel() for p in net.parameters())
        assert n == released_encoder(shape[0], 64, kwargs.get("out_dim", 128))
        if count is not None:
            assert n == count
    convs = [m for m in Conv64Encoder((1, 64, 64)).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and all(c.bias is not None for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 128, 128, 128, 128]


ENCODES = {"byol": ("continuous", "softmax", "gumbel", "vq"),  # vq: vq-byol
           "mocosimclr": ("continuous", "softmax", "gumbel")}  # moco-simclr/__init__.py:66-67
CASES = [(m, d, c, e) for m, encodes in ENCODES.items()
         for d, c in (("dsprites-procedural", 1), ("mpi3d-toy", 3)) for e in encodes]


@pytest.mark.parametrize("method,dataset,channels,encode", CASES)
def test_preset_networks_have_the_released_parameter_counts(method, dataset, channels, encode):
    config = pipelines.build_config(method, dataset, flags={"encode_method": encode})
    model = method_class(method)(config, DataInfo(dataset, (channels, 64, 64), 3, True))
    count = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("backbone", "embedder", "bridge", "projector", "predictor")}
    assert count["backbone"] == released_encoder(channels, 64, 256)
    assert sum(count.values()) - count["backbone"] == released_heads(method, encode)
    predictor = model.predictor
    assert isinstance(predictor, torch.nn.Linear) and predictor.bias is None
    assert predictor.weight.shape == (256, 256)


# ------------------------------------------------------------------------------ BYOL loss
def test_byol_loss_conventions_on_a_known_pair():
    """cos(p_a, z_b) = 1 / sqrt(2), cos(p_b, z_a) = -1 / 2: released -(c1 + c2) / 2, Grill's
    (2 - 2 c1) + (2 - 2 c2) = 4 + 4 * released."""
    p_a, z_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    p_b, z_a = torch.tensor([[0.0, 2.0]]), torch.tensor([[math.sqrt(3.0), -1.0]])
    c1, c2 = 1 / math.sqrt(2), -0.5
    released = float(symmetric_byol_loss(p_a, p_b, z_a, z_b, "released")["loss"])
    grill = float(symmetric_byol_loss(p_a, p_b, z_a, z_b, "grill")["loss"])
    assert released == pytest.approx(-(c1 + c2) / 2, abs=1e-7)
    assert grill == pytest.approx((2 - 2 * c1) + (2 - 2 * c2), abs=1e-6)
    assert grill == pytest.approx(4 + 4 * released, abs=1e-6)
    config = pipelines.build_config("byol", "dsprites")
    assert config.model.byol_loss == "released"
    with pytest.raises(ConfigError, match="byol_loss"):
        pipelines.build_config("byol", "digits", flags={"byol_loss": "mse"})


# ------------------------------------------------------------------------------------- VQ
def _bridge(**kw: object) -> VQBridge:
    args = {"message_size": 3, "vocab_size": 4, "code_dim": 2, "beta": 0.25, "tau": 0.5,
            "hard": True, "update": "released", "commitment_scale": "released", **kw}
    bridge = VQBridge(**args)
    with torch.no_grad():
        bridge.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5], [3.0, -3.0]]))
    return bridge


E = torch.tensor([[0.1, -0.2, 0.9, 1.3, -1.5, 0.2], [3.0, 3.0, 2.5, -2.0, 0.0, 0.4]])
NEAREST = [0, 1, 2, 1, 3, 0]  # by hand


def test_vq_commitment_weight_is_half_l_d_over_tau_times_ours():
    """encode.py:276-283: 0.5 / tau * beta * sum over (L, d), mean over the batch."""
    bridge = _bridge().eval()
    e = E.clone().requires_grad_(True)
    m, aux = bridge(e)
    q = bridge.codebook.detach()[NEAREST].reshape(2, 6)
    torch.testing.assert_close(m.detach(), q)
    sq = (E - q) ** 2
    expect = 0.5 / 0.5 * 0.25 * float(sq.sum()) / 2
    assert float(aux["vq_commitment"]) == pytest.approx(expect, rel=1e-6)
    mean = float(_bridge(commitment_scale="mean").eval()(E)[1]["vq_commitment"])
    assert mean == pytest.approx(0.25 * float(sq.mean()), rel=1e-6)
    assert float(aux["vq_commitment"]) / mean == pytest.approx(0.5 * 3 * 2 / 0.5)  # 0.5 L d / tau
    (m * torch.arange(12.0).view(2, 6)).sum().backward()
    torch.testing.assert_close(e.grad, torch.arange(12.0).view(2, 6))  # straight-through
    assert not bridge.codebook.requires_grad  # no gradient path to the hard VQ's codebook


def test_released_codebook_update_averages_the_vectors_not_assigned():
    """encode.py:234-243 (bug included): C_k <- C_k + (1 - gamma) (sum_{i: y_i != k} e_i /
    max(n_k, 1) - C_k)."""
    bridge = _bridge(decay=0.85).train()
    before = bridge.codebook.detach().clone()
    bridge(E)
    vectors = E.reshape(6, 2)
    for k in range(4):
        rest = sum((vectors[i] for i in range(6) if NEAREST[i] != k), torch.zeros(2))
        new = rest / max(NEAREST.count(k), 1)
        torch.testing.assert_close(bridge.codebook[k].detach(),
                                   before[k] + 0.15 * (new - before[k]))
    unused = _bridge().train()  # a code nobody picks moves towards the sum of all vectors
    unused(torch.tensor([[0.1, 0.1, 0.2, -0.1, -0.1, 0.0]]))
    torch.testing.assert_close(unused.codebook[3].detach(),
                               torch.tensor([3.0, -3.0]) * 0.85 + 0.15 * torch.tensor([0.2, 0.0]))


def test_codebook_init_std():
    """encode.py:213-215: N(0, 2 / (L d)); ours (kmeans) N(0, 1)."""
    torch.manual_seed(0)
    released = VQBridge(message_size=256, vocab_size=4096, code_dim=8, update="released")
    assert released.init_std == pytest.approx(math.sqrt(2 / (256 * 8)))
    assert float(released.codebook.std()) == pytest.approx(0.03125, rel=0.02)
    kmeans = VQBridge(message_size=256, vocab_size=4096, code_dim=8, update="kmeans")
    assert float(kmeans.codebook.std()) == pytest.approx(1.0, rel=0.02)


def test_target_updates_its_own_codebook_released_copies_kmeans():
    for update in ("released", "kmeans"):
        online = _bridge(update=update).train()
        target = MomentumTarget({"bridge": online}, 0.99, 0.99)["bridge"].train()
        with torch.no_grad():
            online.codebook.add_(0.5)  # the online codebook moves away from the target's
        before = target.codebook.detach().clone()
        target(E)  # the teacher's own forward (torch.no_grad in the method)
        changed = not torch.equal(target.codebook.detach(), before)
        assert changed == (update == "released")
        mid = target.codebook.detach().clone()
        MomentumTarget.move_towards({"bridge": target}, {"bridge": online}, 0.99)
        if update == "released":  # a parameter: EMA towards the online codebook
            torch.testing.assert_close(target.codebook.detach(),
                                       0.99 * mid + 0.01 * online.codebook.detach())
        else:  # a buffer: copied
            assert torch.equal(target.codebook, online.codebook)


def test_stochastic_vq_samples_the_softmax_and_adds_noise():
    """--hard=False: k ~ softmax(-||e - C_k||^2 / (2 tau)) while training; m = (1 - sqrt(b))
    C_k + sqrt(b) e + sqrt(tau) eps; gradients reach C and e; argmax in eval."""
    torch.manual_seed(0)
    n_groups = 20000
    bridge = VQBridge(message_size=n_groups, vocab_size=3, code_dim=2, beta=0.25, tau=2.0,
                      hard=False, update="released").train()
    with torch.no_grad():
        bridge.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    point = torch.tensor([0.5, 0.5])
    e = point.repeat(1, n_groups).requires_grad_(True)
    m, aux = bridge(e)
    dist = ((point - bridge.codebook.detach()) ** 2).sum(1)
    probs = torch.softmax(-dist / (2 * 2.0), 0)
    m = m.view(n_groups, 2)
    codes = bridge.codebook.detach()
    # E[m] = 0.5 sum_k p_k C_k + 0.5 e (zero-mean noise): the sampling probabilities
    torch.testing.assert_close(m.detach().mean(0), 0.5 * (probs[:, None] * codes).sum(0)
                               + 0.5 * point, atol=0.03, rtol=0)
    # Var(m_y) = 0.25 Var_k(C_ky) + tau
    code_var = float(0.25 * ((probs * codes[:, 1] ** 2).sum() - (probs * codes[:, 1]).sum() ** 2))
    assert float(m.detach()[:, 1].var()) == pytest.approx(2.0 + code_var, rel=0.05)
    assert float(aux["vq_commitment"]) == pytest.approx(
        0.5 / 2.0 * 0.25 * float(((m.detach() - point) ** 2).sum()), rel=1e-5)
    m.sum().backward()
    assert bridge.codebook.grad is not None and bridge.codebook.grad.abs().sum() > 0
    torch.testing.assert_close(e.grad, torch.full_like(e, 0.5))  # d m / d e = sqrt(beta)
    bridge.eval()
    code = bridge.code(point.repeat(1, n_groups)).view(n_groups, 3)
    assert torch.all(code.argmax(1) == dist.argmin())  # eval: the most likely code
    with pytest.raises(ConfigError, match="hard"):
        VQBridge(hard=False, update="kmeans")


def test_gumbel_temperature_defaults_to_one():
    config = pipelines.build_config("byol", "digits", flags={"encode_method": "gumbel"})
    model = method_class("byol")(config, DataInfo("digits", (1, 8, 8), 10, True))
    assert model.bridge.tau == 1.0 and model.target["bridge"].tau == 1.0


# --------------------------------------------------------------------------- data and presets
def test_released_heldout_split_is_torch_random_split_with_seeds_100_102():
    """loaders/dsprites.py:71-86 on the dSprites K=2 train split (92,160 images in grid order)."""
    n, n_train = 92160, 45000
    keep, held = released_heldout_split(n, n_train)
    train, rest = random_split(range(n), [n_train, n - n_train],
                               generator=torch.Generator().manual_seed(100))
    m = min(len(rest) // 2, 50000)
    iid, _ = random_split(rest, [m, len(rest) - m], generator=torch.Generator().manual_seed(102))
    assert keep.tolist() == sorted(train.indices)
    assert held.tolist() == sorted(rest.indices[i] for i in iid.indices)
    assert (len(keep), len(held)) == (45000, 23580)
    parts = factor_split_indices("dsprites", (1, 3, 6, 40, 32, 32), "ood", 2, 0.1, "released",
                                 n_train)
    full = factor_split_indices("dsprites", (1, 3, 6, 40, 32, 32), "ood", 2, 0.0)["train"]
    assert torch.equal(parts["train"], full[keep]) and torch.equal(parts["heldout"], full[held])
    with pytest.raises(ConfigError, match="n_train"):
        released_heldout_split(10, 10)
    with pytest.raises(ConfigError, match="n_train"):
        pipelines.build_config("byol", "dsprites", sets=["data.n_train=0"])


@pytest.mark.parametrize("method", ["byol", "mocosimclr"])
@pytest.mark.parametrize("dataset,n_train", [("dsprites", 45000), ("mpi3d-real", 130000)])
def test_presets_follow_the_launch_scripts(method, dataset, n_train):
    config = pipelines.build_config(method, dataset)
    model, optim, data = config.model, config.optim, config.data
    assert (data.batch_size, data.heldout_split, data.n_train) == (256, "released", n_train)
    assert (optim.name, optim.lr, optim.weight_decay) == ("adamw", 1e-3, 1e-4)
    assert not optim.exclude_bias_and_norm
    assert (model.feature_dim, model.message_size, model.vocab_size) == (256, 256, 32)
    assert (model.width, model.tau, model.hard, model.predictor) == (64, 1.0, False, "linear")
    assert model.proj_dims == [1024, 256] and model.proj_last_bn
    if method == "byol":
        assert (model.base_momentum, model.final_momentum) == (0.99, 0.99)
        assert model.embed_bn and model.byol_loss == "released"
    else:
        assert (model.momentum, model.temperature) == (0.99, 1.0)
        assert model.queue_size == 2 * 256 * 16 and not model.embed_bn
    assert config.augment.normalize_stats == "train"


def test_mpi3d_crop_is_torchvision_nearest_pixel_for_pixel():
    """loaders/mpi3d.py:59-61: RandomResizedCrop(..., NEAREST) on float tensors, i.e.
    F.interpolate(mode="nearest"): ours with interpolation nearest-legacy gives the same pixels."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from selfsup.data.augment import AugmentConfig, BatchAugment

    assert mpi3d.AUGMENT["interpolation"] == "nearest-legacy"
    assert pipelines.build_config("byol", "mpi3d-toy").augment.interpolation == "nearest-legacy"
    x = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for mode, tv_mode in (("nearest-legacy", InterpolationMode.NEAREST),
                          ("nearest", InterpolationMode.NEAREST_EXACT)):
        aug = BatchAugment(AugmentConfig(crop_scale=[0.5, 1.0], interpolation=mode), (3, 64, 64))
        params = aug.sample_params(12, generator=torch.Generator().manual_seed(1))
        params["hflip"][:] = False
        out = aug._geometry(x, params)
        for i in range(12):
            top, left, h, w = (int(v) for v in params["box"][i])
            ref = TF.resized_crop(x[i], top, left, h, w, [64, 64], interpolation=tv_mode)
            assert torch.equal(out[i], ref), (mode, i)
    with pytest.raises(ConfigError, match="nearest-legacy"):
        AugmentConfig(interpolation="nearest-legacy", affine_degrees=4.0).validate()


# --------------------------------------------------------------------- the shared target network
def test_momentum_target_is_one_helper_for_byol_and_moco():
    """Frozen EMA copies of backbone, embedder, bridge and projector; cosine (BYOL) or constant
    (MoCo) momentum; neither method re-implements training_loss."""
    from selfsup.methods.byol import BYOL
    from selfsup.methods.joint_embedding import JointEmbedding
    from selfsup.methods.mocosimclr import MoCoSimCLR
    from selfsup.nets.ema import cosine_momentum

    info = DataInfo("digits", (1, 8, 8), 10, True)
    byol = BYOL(pipelines.build_config("byol", "digits", flags={"epochs": 2}), info)
    moco = MoCoSimCLR(pipelines.build_config("mocosimclr", "digits", flags={"queue_size": 256,
                                                                           "batch_size": 128}),
                      info)
    for model in (byol, moco):
        assert isinstance(model.target, MomentumTarget)
        assert set(model.target) == {"backbone", "embedder", "bridge", "projector"}
        assert not any(p.requires_grad for p in model.target.parameters())
        assert type(model).training_loss is JointEmbedding.training_loss
        assert type(model).optimizer_step is JointEmbedding.optimizer_step
    byol.steps_per_epoch = 10
    assert byol.target_momentum(7) == pytest.approx(cosine_momentum(7, 20, 0.99, 1.0))
    assert moco.target_momentum(0) == moco.target_momentum(10**6) == 0.99
    with pytest.raises(ConfigError, match="momentum"):
        MomentumTarget({"a": torch.nn.Linear(2, 2)}, 0.9, 0.5)
