"""Training writes a complete run folder; resuming reaches the same weights as never stopping."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import tiny_vae_flags
from helpers import InterruptAt, assert_same_weights, weights
from selfsup import engine, pipelines
from selfsup.errors import NonFiniteLossError, RunError


def test_run_folder_contents(tmp_path):
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=2))
    method, result = pipelines.train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "epoch=0000.ckpt").is_file()
    assert (run / "metrics.csv").read_text().count("\n") > 2
    assert any((run / "tensorboard").iterdir())
    assert result.global_step == 2 * (1438 // 64)
    loaded = pipelines.load_run(run)
    assert_same_weights(weights(method), weights(loaded))
    with pytest.raises(RunError, match="already holds a run"):
        pipelines.train(config, run)


def test_resume_from_epoch_end_matches_uninterrupted(tmp_path):
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=3))
    full, _ = pipelines.train(config, tmp_path / "full")

    short = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    pipelines.train(short, tmp_path / "split")
    resumed, result = pipelines.resume(tmp_path / "split", epochs=3)
    assert result.global_step == 3 * (1438 // 64)
    assert_same_weights(weights(full), weights(resumed))


def test_sigint_mid_epoch_saves_and_resume_is_exact(tmp_path, monkeypatch):
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=2))
    full, _ = pipelines.train(config, tmp_path / "full")

    original_fit = engine.fit

    def fit_with_interrupt(*args, **kwargs):
        return original_fit(*args, **kwargs, extra_callbacks=[InterruptAt(30)])

    monkeypatch.setattr(pipelines, "fit", fit_with_interrupt)
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=2))
    _, result = pipelines.train(config, tmp_path / "split")
    assert result.interrupted and result.global_step in (30, 31)  # the step in flight finishes
    monkeypatch.setattr(pipelines, "fit", original_fit)
    resumed, result = pipelines.resume(tmp_path / "split")
    assert result.global_step == 2 * (1438 // 64)
    assert_same_weights(weights(full), weights(resumed))


def test_in_memory_batches_order_and_sharding():
    from selfsup.data import load_dataset

    ds = load_dataset("digits", ".", "train")
    loader = engine.InMemoryBatches(ds, 64, seed=3)
    first = [labels for _, labels in loader]
    again = [labels for _, labels in engine.InMemoryBatches(ds, 64, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    loader.set_epoch(1)
    other = [labels for _, labels in loader]
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert len(first) == 1438 // 64 and all(b.shape[0] == 64 for b in first)
    resumed = engine.InMemoryBatches(ds, 64, seed=3)
    resumed.load_state_dict({"epoch": 0, "consumed": 5})
    assert torch.equal(next(iter(resumed))[1], first[5])
    done = engine.InMemoryBatches(ds, 64, seed=3)
    done.load_state_dict({"epoch": 0, "consumed": len(first)})
    assert done.epoch == 1 and done.consumed == 0


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    config = pipelines.build_config(
        "vae", "digits", flags=tiny_vae_flags(epochs=1), sets=["optim.lr=1e30"]
    )
    with pytest.raises(NonFiniteLossError) as info:
        pipelines.train(config, tmp_path / "nan")
    message = str(info.value)
    assert "became NaN or infinite" in message and "loss" in message


def test_unwritable_output_dir_fails_before_training(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/selfsup-cannot-write-here"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "run")
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    with pytest.raises(RunError, match="Cannot write"):
        pipelines.train(config, target)


def test_atomic_checkpoint_keeps_previous_file_on_failure(tmp_path):
    io = engine.AtomicCheckpointIO()
    path = tmp_path / "c.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("fail mid-write")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"state_dict": {"w": Boom()}}, path)
    assert torch.equal(engine.load_checkpoint_file(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temporary file left
    path.write_bytes(b"garbage")
    with pytest.raises(RunError, match="corrupt"):
        engine.load_checkpoint_file(path)


def test_bf16_mixed_precision_and_gradient_clipping_train(tmp_path):
    config = pipelines.build_config(
        "vae", "digits", flags=tiny_vae_flags(epochs=1),
        sets=["trainer.precision=bf16-mixed", "trainer.gradient_clip=0.5"],
    )
    method, result = pipelines.train(config, tmp_path / "bf16")
    assert result.global_step == 1438 // 64
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_checkpoint_of_another_method_is_refused(tmp_path):
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    pipelines.train(config, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["selfsup"]["method"] = "simclr"
    torch.save(ckpt, path)
    with pytest.raises(RunError, match="written by method 'simclr'"):
        pipelines.load_run(tmp_path / "run")


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1024))
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    with pytest.raises(RunError, match="MiB are free"):
        pipelines.train(config, tmp_path / "full")
    assert not (tmp_path / "full" / "checkpoints").exists()


def test_fp16_grad_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    """16-mixed uses a GradScaler (on CPU too): its scale must survive a stop and resume."""
    sets = ["trainer.precision=16-mixed", "optim.lr=3e-3"]
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=2), sets=sets)
    full, _ = pipelines.train(config, tmp_path / "full")
    short = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1), sets=sets)
    pipelines.train(short, tmp_path / "split")
    ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=False)
    scaler = ckpt["MixedPrecision"]
    # the scaler moved away from its initial state (65536, no growth yet) during the first epoch
    assert scaler["scale"] != 65536.0 or scaler["_growth_tracker"] > 0
    resumed, result = pipelines.resume(tmp_path / "split", epochs=2)
    assert result.global_step == 2 * (1438 // 64)
    assert_same_weights(weights(full), weights(resumed))
    restored = resumed.trainer.precision_plugin.scaler.state_dict()
    final = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert restored["scale"] == final["MixedPrecision"]["scale"]


def test_compile_networks_keeps_checkpoint_keys():
    """trainer.compile compiles sub-networks in place: parameter names (checkpoints) unchanged."""
    config = pipelines.build_config("vicreg", "digits", sets=["trainer.compile=true"])
    from selfsup.methods import method_class

    method = method_class("vicreg")(config, engine.data_info(pipelines.load_split(config, "train")))
    before = list(method.state_dict())
    compiled = method.compile_networks()
    assert compiled and "augment" not in compiled
    assert list(method.state_dict()) == before


def test_datasets_go_to_the_gpu_only_when_they_fit():
    from selfsup.engine import fits_on_device

    gib = 2**30
    assert fits_on_device(2 * gib, free_bytes=40 * gib)  # e.g. dSprites (3 GiB) on a large GPU
    assert fits_on_device(4 * gib, free_bytes=8 * gib)  # exactly half: still fits
    assert not fits_on_device(4 * gib + 1, free_bytes=8 * gib)  # the rest is for the model
