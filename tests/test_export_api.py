"""`selfsup export` and the Python API: exported encoders give the features `selfsup eval` uses
(torchvision, TorchScript, onnxruntime, selfsup.load_encoder), and the README example runs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup import cli, pipelines
from selfsup.errors import DataError
from selfsup.evaluate.features import frozen_features

README = Path(__file__).resolve().parents[1] / "README.md"
TOL = 1e-5


def _eval_features(run: Path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split (its first ``n`` images) and the features `selfsup eval` computes."""
    method = pipelines.load_run(run)
    test = pipelines.load_split(method.config, "test")
    if n is not None:
        test = test.subset(torch.arange(n))
    features, _ = frozen_features(method, test)  # what pipelines.run_features (eval) calls
    return test.images, features


def test_resnet_export_loads_into_torchvision(tmp_path, capsys):
    import torchvision
    from safetensors.torch import load_file

    config = pipelines.build_config(
        "simclr", "digits",
        flags={"trainer": {"epochs": 1, "max_steps": 2, "plots": False, "progress_bar": False},
               "data": {"batch_size": 32}},
        sets=["model.backbone=resnet18", "augment.normalize=true", "augment.mean=[0.3]",
              "augment.std=[0.4]"],
    )
    pipelines.train(config, tmp_path / "run")
    out = tmp_path / "encoder.safetensors"
    assert cli.main(["export", "--run", str(tmp_path / "run"), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["layout"] == "torchvision" and printed["feature_dim"] == 512
    spec = json.loads(Path(f"{out}.json").read_text())
    tv = spec["torchvision"]
    assert tv["constructor"] == "torchvision.models.resnet18"
    assert set(tv["replace"]) == {"conv1", "maxpool", "fc"}  # the CIFAR stem, 1 channel
    # build it as the JSON says, with torchvision only
    model = torchvision.models.resnet18(weights=None)
    c = tv["conv1"]
    model.conv1 = torch.nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"],
                                  c["stride"], c["padding"], bias=c["bias"])
    model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(str(out)))  # strict: every key is torchvision's own
    model.eval()
    prep = spec["input"]["preprocessing"]
    assert prep["verified"] and prep["normalize"] == {"mean": [0.3], "std": [0.4]}
    images, expected = _eval_features(tmp_path / "run", n=100)
    x = images.float() / 255.0
    x = (x - torch.tensor(prep["normalize"]["mean"]).view(1, -1, 1, 1)) / torch.tensor(
        prep["normalize"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, expected, atol=TOL, rtol=TOL)


def test_torchscript_onnx_and_selfsup_layout_match_eval_features(trained_vae, tmp_path, capsys):
    from safetensors.torch import load_file

    from selfsup.export import load_encoder

    images, expected = _eval_features(trained_vae)
    x = images.float() / 255.0
    st = tmp_path / "vae.safetensors"
    assert cli.main(["export", "--run", str(trained_vae), "--out", str(st)]) == 0
    spec = json.loads(Path(f"{st}.json").read_text())
    assert spec["layout"] == "selfsup" and spec["modules"] == ["encoder"]  # no decoder weights
    assert all(k.startswith("encoder.") for k in load_file(str(st)))
    with torch.no_grad():
        assert torch.allclose(load_encoder(st)(x), expected, atol=TOL, rtol=TOL)
        assert torch.allclose(load_encoder(st)(images), expected, atol=TOL, rtol=TOL)  # uint8
    ts = tmp_path / "vae.pt"
    assert cli.main(["export", "--run", str(trained_vae), "--out", str(ts), "--format",
                     "torchscript"]) == 0
    module = torch.jit.load(str(ts))
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=TOL, rtol=TOL)
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnx / onnxruntime not installed (pip install onnx onnxruntime)")
    import onnxruntime

    onnx_file = tmp_path / "vae.onnx"
    assert cli.main(["export", "--run", str(trained_vae), "--out", str(onnx_file), "--format",
                     "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert torch.allclose(got, expected, atol=TOL, rtol=TOL)


def test_export_help_and_errors(trained_vae, tmp_path, capsys):
    assert cli.main(["export", "--help"]) == 0  # main returns the exit code of --help too
    out = capsys.readouterr().out
    assert "safetensors" in out and "torchvision" in out and "--format" in out
    assert cli.main(["export", "--run", str(tmp_path / "nothing"), "--out", "x.pt"]) == 2
    assert "not a selfsup run folder" in capsys.readouterr().err


def test_run_embed_takes_any_image_layout(trained_vae):
    import selfsup

    run = selfsup.load_run(trained_vae)
    images, expected = _eval_features(trained_vae)
    assert run.config.method == "vae" and run.image_shape == (1, 8, 8)
    assert torch.allclose(run.embed(images, batch_size=7), expected, atol=TOL)
    assert torch.allclose(run.embed(images.float() / 255), expected, atol=TOL)
    assert torch.allclose(run.embed(images.numpy()), expected, atol=TOL)
    channels_last = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    assert torch.allclose(run.embed(channels_last), expected, atol=TOL)
    assert torch.allclose(run.embed(images[0])[0], expected[0], atol=TOL)
    assert torch.allclose(run.encoder(images), expected, atol=TOL)
    with pytest.raises(DataError, match="takes images of shape"):
        run.embed(torch.zeros(2, 3, 8, 8))


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Use selfsup from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README section has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md: Use selfsup from Python", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "runs" / "vae-digits-py" / "checkpoints" / "last.ckpt").is_file()


def test_export_describes_the_declared_preprocessing_of_an_stl10_aavae():
    """The description names the data layer's resize + center crop and normalisation, and the
    recipe it states, applied with torchvision, gives the method's own evaluation input."""
    import torchvision.transforms.v2.functional as TF

    from selfsup.data.base import DataInfo
    from selfsup.export import describe_preprocessing
    from selfsup.methods import method_class

    config = pipelines.build_config("aavae", "stl10", sets=["trainer.online_probe=false",
                                                            "model.encoder=resnet18"])
    method = method_class("aavae")(config, DataInfo("stl10", (3, 96, 96), 10, True)).eval()
    spec = describe_preprocessing(method)
    assert spec["verified"] and spec["binarize"] is None
    assert spec["resize"]["shorter_side"] == 105 and spec["resize"]["crop"] == [96, 96]
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    x = TF.center_crop(TF.resize(images.float() / 255.0, [105], antialias=True), [96, 96])
    mean = torch.tensor(spec["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(spec["normalize"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose((x - mean) / std, method.preprocess(images), atol=1e-4)
