"""Export a run's frozen encoder for use without training code.

:class:`FrozenEncoder` is the representation every probe uses: ``encode(preprocess(images))``,
flattened to (N, D) float32, for images (N, C, H, W) given as uint8 (0..255) or as floats in
[0, 1]. :func:`export_encoder` writes it in one of three formats, each with a JSON file beside it
(``FILE.json``, e.g. ``encoder.safetensors.json``) saying how to build and feed it:

- ``safetensors``: the encoder's weights as a plain state dict (no code, safe to load). For a
  torchvision ResNet backbone the keys are torchvision's own (``conv1.weight``, ``layer1.0...``),
  so they load into ``torchvision.models.resnet18/34/50`` once the JSON's replaced layers (e.g.
  the 3x3 CIFAR stem, no max-pool, ``fc = Identity``) are swapped in; otherwise the keys are the
  method's and :func:`load_encoder` rebuilds the network with selfsup. The input preprocessing
  (scaling, normalisation) is stated in the JSON; it is not part of the weights.
- ``torchscript``: a traced module including the preprocessing (``torch.jit.load``).
- ``onnx``: the same graph for onnxruntime and other runtimes (needs the ``onnx`` package).

Every export is checked before this returns: the exported network must reproduce the features of
the run's own encoder (to 1e-5), else the file is removed again and the error says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError, RunError

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
EXPORT_VERSION = 1
#: The exported features must match the run's own to this (absolute and relative) tolerance.
TOLERANCE = 1e-5


class FrozenEncoder(nn.Module):
    """The representation the probes use, as a module: images (N, C, H, W), uint8 or float in
    [0, 1] -> features (N, D) float32. Always in eval mode."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method
        self.image_shape = tuple(method.info.image_shape)  # type: ignore[attr-defined]
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:  # frozen: batch norm keeps its stats
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        method = self.method
        h = method.encode(method.preprocess(images))  # type: ignore[operator]
        return h.float().flatten(1)


# ------------------------------------------------------------------------------- the encoder
def _example(method: Any, n: int = 4, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *method.info.image_shape)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(method.device)


def _used_children(method: Any, example: Tensor) -> list[str]:
    """The method's direct sub-networks that run when it encodes ``example``."""
    used: list[str] = []
    hooks = [
        child.register_forward_pre_hook(lambda module, args, name=name: used.append(name))
        for name, child in method.named_children()
    ]
    try:
        with torch.no_grad():
            method.encode(method.preprocess(example))
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(used))


def _on_cpu(method: Any) -> Any:
    """``method`` itself when it is on the CPU, else a CPU copy (the caller's stays where it is)."""
    from selfsup.methods import method_class

    if method.device.type == "cpu":
        return method.eval()
    copy = method_class(method.config.method)(method.config, method.info)
    copy.load_state_dict({k: v.cpu() for k, v in method.state_dict().items()})
    return copy.eval()


def encoder_only(method: Any) -> tuple[FrozenEncoder, list[str]]:
    """A copy of ``method`` holding only the sub-networks its encoder runs (plus the
    preprocessing), checked to give the same features; falls back to the whole method.

    Returns the :class:`FrozenEncoder` and the names of the sub-networks kept.
    """
    from selfsup.methods import method_class

    method = method.eval()
    example = _example(method)
    with torch.no_grad():
        reference = FrozenEncoder(method)(example)
    used = _used_children(method, example)
    clone = method_class(method.config.method)(method.config, method.info).to(method.device)
    clone.load_state_dict(method.state_dict())
    names = [name for name, _ in method.named_children()]
    for name in names:
        if name not in used and name != "augment":
            setattr(clone, name, nn.Module())  # dropped: the encoder never runs it
    encoder = FrozenEncoder(clone)
    try:
        with torch.no_grad():
            same = torch.equal(encoder(example), reference)
    except Exception:  # noqa: BLE001 - the encoder touches a dropped part: keep everything
        same = False
    if not same:
        return FrozenEncoder(method), names
    return encoder, [n for n in names if n in used or n == "augment"]


def describe_preprocessing(method: Any) -> dict[str, Any]:
    """How images are prepared for the encoder, checked against ``method.preprocess``.

    ``{"scale": "x / 255", "normalize": {"mean": [...], "std": [...]} | None,
    "binarize": t | None, "verified": bool}``: ``verified`` is False when the method's
    preprocessing is not this recipe (the TorchScript and ONNX exports include it anyway).
    """
    cfg = method.config.augment
    normalize = (
        {"mean": [float(m) for m in cfg.mean], "std": [float(s) for s in cfg.std]}
        if cfg.normalize else None
    )
    example = _example(method, n=8, seed=1)
    with torch.no_grad():
        actual = method.preprocess(example).float()
    candidates = [None]
    for holder in (method.config.model, cfg):
        threshold = getattr(holder, "binarize", None)
        if threshold is not None:
            candidates.append(float(threshold))
    for threshold in candidates:
        x = example.float() / 255.0
        if threshold is not None:
            x = (x > threshold).float()
        if normalize is not None:
            mean = torch.tensor(normalize["mean"], device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(normalize["std"], device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        if x.shape == actual.shape and torch.allclose(x, actual, atol=1e-6, rtol=1e-6):
            return {"scale": "x / 255 (uint8 -> float in [0, 1])", "binarize": threshold,
                    "normalize": normalize, "verified": True}
    return {"scale": "x / 255 (uint8 -> float in [0, 1])", "binarize": None,
            "normalize": normalize, "verified": False,
            "note": "this method prepares images in its own way (see its preprocess()); the "
                    "TorchScript and ONNX exports include it"}


def _torchvision_layout(encoder: FrozenEncoder, kept: list[str]) -> dict[str, Any] | None:
    """When the representation is exactly what a stock torchvision ResNet computes (checked by
    building one and running it): how to build it, and the prefix its keys have in the method."""
    import torchvision

    nets = [n for n in kept if n != "augment"]
    if len(nets) != 1:
        return None
    net = getattr(encoder.method, nets[0])
    if not isinstance(net, torchvision.models.ResNet):
        return None
    example = _example(encoder.method)
    with torch.no_grad():
        direct = net(encoder.method.preprocess(example)).float().flatten(1)
        if not torch.equal(direct, encoder(example)):
            return None
    conv = net.conv1
    conv1 = {
        "in_channels": conv.in_channels, "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size[0], "stride": conv.stride[0],
        "padding": conv.padding[0], "bias": conv.bias is not None,
    }
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    classes = net.fc.out_features if isinstance(net.fc, nn.Linear) else None  # fc kept as output
    args = "weights=None" + (f", num_classes={classes}" if classes else "")
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        ref = getattr(torchvision.models, name)(weights=None, num_classes=classes or 1000)
        ref.conv1 = nn.Conv2d(conv1["in_channels"], conv1["out_channels"], conv1["kernel_size"],
                              conv1["stride"], conv1["padding"], bias=conv1["bias"])
        if isinstance(net.maxpool, nn.Identity):
            ref.maxpool = nn.Identity()
        if classes is None:
            ref.fc = nn.Identity()
        if {k: tuple(v.shape) for k, v in ref.state_dict().items()} == own:
            break
    else:
        return None
    ref.load_state_dict(net.state_dict())  # torchvision's own forward must give the features
    ref = ref.to(direct.device).eval()
    with torch.no_grad():
        rebuilt = ref(encoder.method.preprocess(example)).float().flatten(1)
    if not torch.allclose(rebuilt, direct, atol=TOLERANCE, rtol=TOLERANCE):
        return None  # a modified ResNet (e.g. another block): keep the method's own layout
    replaced = {} if classes else {"fc": "torch.nn.Identity()  # the features: pooled output"}
    standard = (conv1["in_channels"], conv1["kernel_size"], conv1["stride"]) == (3, 7, 2)
    if not standard or conv1["padding"] != 3 or conv1["bias"]:
        replaced["conv1"] = (
            f"torch.nn.Conv2d({conv1['in_channels']}, {conv1['out_channels']}, kernel_size="
            f"{conv1['kernel_size']}, stride={conv1['stride']}, padding={conv1['padding']}, "
            f"bias={conv1['bias']})"
        )
    if isinstance(net.maxpool, nn.Identity):
        replaced["maxpool"] = "torch.nn.Identity()"
    python = "\n".join(
        [f"model = torchvision.models.{name}({args})"]
        + [f"model.{layer} = {code.split('  #')[0]}" for layer, code in replaced.items()]
        + ["model.load_state_dict(safetensors.torch.load_file(FILE))", "model.eval()"]
    )
    return {"constructor": f"torchvision.models.{name}", "arguments": args,
            "num_classes": classes, "prefix": f"{nets[0]}.", "replace": replaced, "conv1": conv1,
            "maxpool": "identity" if isinstance(net.maxpool, nn.Identity) else "torchvision",
            "python": python}


# ------------------------------------------------------------------------------------ export
def export_encoder(
    method: Any, out: str | Path, fmt: str = "safetensors", run_dir: str | Path | None = None
) -> dict[str, Any]:
    """Write the frozen encoder of ``method`` to ``out`` and its description to ``out.json``.

    Returns the description (also written as JSON). Each format is checked against the method's
    own features (to :data:`TOLERANCE`) before this returns.
    """
    from selfsup import __version__

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    out = Path(out)
    if out.suffix == ".json":
        raise ConfigError(f"--out {out} is where the description goes; name the {fmt} file.")
    method = _on_cpu(method)
    encoder, kept = encoder_only(method)
    example = _example(method, n=5, seed=2)
    with torch.no_grad():
        expected = FrozenEncoder(method)(example)
    c, h, w = method.info.image_shape
    spec: dict[str, Any] = {
        "format": fmt,
        "selfsup_export": EXPORT_VERSION,
        "selfsup_version": __version__,
        "file": out.name,
        "run": str(run_dir) if run_dir is not None else None,
        "method": method.config.method,
        "dataset": method.config.data.name,
        "input": {
            "shape": ["N", int(c), int(h), int(w)],
            "dtype": "float32 in [0, 1] (uint8 images divided by 255)",
            "preprocessing": describe_preprocessing(method),
            "preprocessing_included": fmt != "safetensors",
        },
        "output": {"shape": ["N", int(expected.shape[1])], "dtype": "float32",
                   "meaning": "the frozen representation selfsup's probes use"},
        "modules": [n for n in kept if n != "augment"],
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "safetensors":
            spec.update(_write_safetensors(encoder, kept, out, example, expected))
        elif fmt == "torchscript":
            _write_torchscript(encoder, out, example, expected)
            spec["load"] = "torch.jit.load(FILE).eval(); features = module(images)"
        else:
            _write_onnx(encoder, out, example, expected)
            spec["load"] = ("onnxruntime.InferenceSession(FILE).run(None, {'images': x})[0] "
                            "with x float32 (N, C, H, W) in [0, 1]")
        json_path = description_path(out)
        json_path.write_text(json.dumps(spec, indent=2) + "\n")
    except OSError as exc:
        raise RunError(f"Cannot write the export to {out} ({exc.strerror or exc}). Choose "
                       "another --out.") from None
    except RunError:  # the check failed: leave nothing that looks usable
        out.unlink(missing_ok=True)
        raise
    spec["json"] = str(json_path)
    return spec


def _check(got: Tensor, expected: Tensor, what: str) -> None:
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=TOLERANCE,
                                                          rtol=TOLERANCE):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
        raise RunError(
            f"The {what} export does not reproduce the run's features (max difference {diff}); "
            "nothing usable was written. Export in another format (--format)."
        )


def _write_safetensors(encoder: FrozenEncoder, kept: list[str], out: Path, example: Tensor,
                       expected: Tensor) -> dict[str, Any]:
    from safetensors.torch import save_file

    layout = _torchvision_layout(encoder, kept)
    state = encoder.method.state_dict()
    if layout is not None:
        prefix = layout["prefix"]
        tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        nets = tuple(f"{n}." for n in kept if n != "augment")
        tensors = {k: v for k, v in state.items() if k.startswith(nets)}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(out), metadata={"format": "selfsup-encoder",
                                           "layout": "torchvision" if layout else "selfsup"})
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)  # safetensors creates the file private; make it a normal file
    info: dict[str, Any] = {"keys": len(tensors)}
    if layout is not None:
        info["layout"] = "torchvision"
        info["torchvision"] = layout
    else:
        info["layout"] = "selfsup"
        info["load"] = "selfsup.export.load_encoder(FILE) (rebuilds the network from 'config')"
    info["config"] = encoder.method.config.to_dict()
    info["data_info"] = encoder.method.info.to_dict()
    loaded = load_encoder(out, spec={**info, "format": "safetensors"})
    with torch.no_grad():
        _check(loaded(example), expected, "safetensors")
    return info


@contextmanager
def _tracing(encoder: FrozenEncoder) -> Iterator[None]:
    """Lightning modules raise on ``.trainer`` outside training, which the tracer probes; their
    scripting flag makes it return None (what Lightning's own ``to_torchscript`` does)."""
    import warnings

    modules = [m for m in encoder.modules() if hasattr(m, "_jit_is_scripting")]
    for module in modules:
        module._jit_is_scripting = True
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for module in modules:
            module._jit_is_scripting = False


def _write_torchscript(encoder: FrozenEncoder, out: Path, example: Tensor,
                       expected: Tensor) -> None:
    x = example.float() / 255.0
    with _tracing(encoder):
        traced = torch.jit.trace(encoder, (x,), check_trace=False)
    traced.save(str(out))
    loaded = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        _check(loaded(x[:3]), expected[:3], "TorchScript")  # another batch size than traced


def _write_onnx(encoder: FrozenEncoder, out: Path, example: Tensor, expected: Tensor) -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(
            "--format onnx needs the onnx package: `pip install onnx` (and onnxruntime to run "
            "the file). The safetensors and torchscript formats need nothing extra."
        )
    x = example.float() / 255.0
    with _tracing(encoder):
        torch.onnx.export(
            encoder, (x,), str(out), dynamo=False, input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x[:3].numpy()})[0]
        _check(torch.from_numpy(got), expected[:3], "ONNX")


# -------------------------------------------------------------------------------------- load
def description_path(path: str | Path) -> Path:
    """Where the JSON description of an export lives: ``FILE.json`` beside ``FILE``."""
    return Path(f"{path}.json")


def read_spec(path: str | Path) -> dict[str, Any]:
    """The JSON description written beside an export."""
    path = Path(path)
    json_path = path if path.suffix == ".json" else description_path(path)
    try:
        return json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"Cannot read the export description {json_path} ({exc}); it is written "
                       "beside the exported file by `selfsup export`.") from None


def load_encoder(path: str | Path, device: str | torch.device = "cpu",
                 spec: dict[str, Any] | None = None) -> FrozenEncoder:
    """A :class:`FrozenEncoder` from a safetensors export (weights only: nothing is unpickled).

    The network is rebuilt from the export's config (with the preprocessing), so it takes
    images exactly like the run's own encoder.
    """
    from safetensors.torch import load_file

    from selfsup.config import config_from_dict
    from selfsup.data.base import DataInfo
    from selfsup.methods import method_class

    path = Path(path)
    spec = spec or read_spec(path)
    if spec.get("format") != "safetensors":
        raise RunError(f"{path} is a {spec.get('format')} export; load_encoder reads safetensors "
                       "exports (use torch.jit.load or onnxruntime for the others).")
    content = spec["config"]
    config = config_from_dict(content, method_class(content["method"]).config_class, str(path))
    method = method_class(config.method)(config, DataInfo.from_dict(spec["data_info"]))
    tensors = load_file(str(path))
    if spec.get("layout") == "torchvision":
        prefix = spec["torchvision"]["prefix"]
        tensors = {prefix + k: v for k, v in tensors.items()}
    missing, unexpected = method.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RunError(f"{path} holds weights the {config.method} network does not have "
                       f"({', '.join(unexpected[:3])}); the file does not match its JSON.")
    kept = tuple(f"{n}." for n in spec.get("modules", []))
    if any(k.startswith(kept) for k in missing):
        raise RunError(f"{path} lacks encoder weights ({', '.join(missing[:3])}); it is "
                       "incomplete.")
    return FrozenEncoder(method.to(device).eval())
