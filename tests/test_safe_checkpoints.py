"""Checkpoints are read without unpickling code: a crafted one is refused by every command and
runs nothing; selfsup's own checkpoints (every method) load; a GPU checkpoint loads on the CPU."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from selfsup import cli, engine, pipelines
from selfsup.rundir import ALLOWED_GLOBALS, UnsafeCheckpointError, _pickle_globals, load_checkpoint


class WritesMarker:
    """Unpickling this calls ``exec``, which writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _crafted(run: Path, tmp_path: Path, payload: str) -> tuple[Path, Path]:
    """A copy of ``run`` whose last.ckpt carries ``payload``; returns (run copy, marker path)."""
    import shutil

    copy = tmp_path / f"run-{payload}"
    shutil.copytree(run, copy)
    marker = tmp_path / f"marker-{payload}"
    path = copy / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    if payload == "reduce":
        ckpt["selfsup"]["extra"] = WritesMarker(marker)
        torch.save(ckpt, path)
    else:  # a pickled function reference (protocol 4: STACK_GLOBAL, names pushed as strings)
        ckpt["selfsup"]["hook"] = os.system
        torch.save(ckpt, path, pickle_protocol=4)
    return copy, marker


@pytest.mark.parametrize("payload", ["reduce", "function"])
def test_crafted_checkpoint_is_refused_by_every_command(trained_vae, tmp_path, capsys, payload):
    run, marker = _crafted(trained_vae, tmp_path, payload)
    with pytest.raises(pickle.UnpicklingError):  # the payload is real: plain torch refuses too
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    commands = {
        "eval": ["eval", "knn", "--run", str(run)],
        "generate": ["generate", "--run", str(run), "--out", str(tmp_path / "gen")],
        "resume": ["train", "--resume", str(run), "--epochs", "2"],
        "export": ["export", "--run", str(run), "--out", str(tmp_path / "e.safetensors")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert "was not loaded" in err and "last.ckpt" in err and err.count("\n") == 1, err
        assert not marker.exists(), f"{name} executed the checkpoint's code"
    assert not (run / "eval").exists() and not (tmp_path / "gen").exists()
    assert not (tmp_path / "e.safetensors").exists()
    # report never unpickles checkpoints at all: it summarises the folder and runs nothing
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 0
    assert not marker.exists()
    # Lightning's own resume load goes through the same reader
    with pytest.raises(UnsafeCheckpointError):
        engine.AtomicCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert not marker.exists()


def test_pickle_scan_names_every_global_without_unpickling():
    data = pickle.dumps({"f": os.path.join, "x": [1, 2.0, "s"]}, protocol=4)
    assert "posixpath.join" in _pickle_globals(data) or "ntpath.join" in _pickle_globals(data)
    assert _pickle_globals(pickle.dumps({"a": [1, (2, "b")], "c": None}, protocol=2)) == []
    assert ("collections", "OrderedDict") in ALLOWED_GLOBALS


def test_checkpoints_of_every_method_load_safely(tmp_path):
    """Every method's checkpoint (two steps, fp16 scaler state included for one) goes through
    the safe reader and reloads the same weights."""
    from selfsup.methods import method_names

    for name in method_names():
        sets = ["trainer.precision=16-mixed"] if name == "vae" else []
        config = pipelines.build_config(name, "digits", flags={
            "trainer": {"epochs": 1, "max_steps": 2, "plots": False, "progress_bar": False},
            "data": {"batch_size": 32}}, sets=sets)
        method, _ = pipelines.train(config, tmp_path / name)
        ckpt = load_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
        assert ckpt["selfsup"]["method"] == name
        loaded = pipelines.load_run(tmp_path / name)
        for key, value in method.state_dict().items():
            assert torch.equal(value.cpu(), loaded.state_dict()[key]), (name, key)


def test_gpu_checkpoint_loads_and_resumes_on_the_cpu(trained_vae, tmp_path):
    """Tensors tagged as CUDA storages (as a GPU run writes them) are mapped to the CPU."""
    import shutil

    import torch.serialization as ser

    run = tmp_path / "gpu-run"
    shutil.copytree(trained_vae, run)
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    entry = (0, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda o, loc: None)
    ser._package_registry.append(entry)
    ser._package_registry.sort(key=lambda e: e[0])
    try:
        torch.save(ckpt, path)
    finally:
        ser._package_registry.remove(entry)
    assert b"cuda:0" in Path(path).read_bytes()
    if not torch.cuda.is_available():  # the premise: a plain load fails on this machine
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)
    method = pipelines.load_run(run)
    assert method.device.type == "cpu"
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, method.state_dict()[key])
    _, result = pipelines.resume(run, epochs=2)  # Lightning's resume reads it the same way
    assert result.global_step == 2 * (1438 // 64)
