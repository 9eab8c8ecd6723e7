"""The run folder across sessions (issue 20 items 1-4, 12, 13, 14): resume keeps the history,
resume options are applied or refused, Ctrl-C never leaves stray checkpoints, a bounded number of
checkpoints is kept, failed starts leave nothing behind, samples/s counts samples."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_vae_flags
from helpers import InterruptAt
from selfsup import cli, engine, pipelines
from selfsup.errors import ConfigError, NonFiniteLossError, RunError
from selfsup.rundir import RunFolder

STEPS = 1438 // 64  # digits train split, batch 64
TINY = ["--dataset", "digits", "--batch-size", "64", "--set", "model.hidden=[32]",
        "--set", "model.latent_dim=4", "--no-progress", "--seed", "3"]


def _selfsup(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfsup", *args]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _step_rows(run: Path) -> list[int]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss_step")]


def _sessions(run: Path) -> list[dict]:
    return json.loads((run / "training.json").read_text())["sessions"]


# ------------------------------------------------------------------ items 1, 3, 4, 14: Ctrl-C
def test_ctrl_c_then_resume_keeps_every_session(tmp_path):
    """SIGINT in epoch 2, resume to the end: metrics.csv, TensorBoard and the loss curve cover
    every step of both sessions exactly once, training.json records both sessions with exact
    sample counts, and the checkpoints are last.ckpt plus the newest three periodic ones."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from selfsup.plots import read_metrics

    run = tmp_path / "run"
    epochs = 5
    train = subprocess.Popen(
        _selfsup("train", "vae", "--out", str(run), "--epochs", "100", "--set",
                 "trainer.log_every=1", "--set", "trainer.plot_every=1000", "--set",
                 "trainer.embedding_plot=none", *TINY),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(run / "checkpoints" / "epoch=0001.ckpt", train)
    train.send_signal(signal.SIGINT)
    out, err = train.communicate(timeout=120)
    assert train.returncode == 0 and "interrupted" in out, err[-2000:]
    first = _sessions(run)[0]
    assert first["interrupted"] and 2 * STEPS <= first["global_step"] < epochs * STEPS

    # the first session was set to 100 epochs so that it is surely interrupted; finish at 5
    done = subprocess.run(_selfsup("train", "--resume", str(run), "--epochs", str(epochs),
                                   "--json"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    sessions = _sessions(run)
    assert len(sessions) == 2 and sessions[-1]["global_step"] == epochs * STEPS
    for session in sessions:  # item 14: samples counted, not steps x batch since step 0
        assert session["samples"] == (session["global_step"] - session["start_step"]) * 64
    assert json.loads(done.stdout)["samples_per_second"] == pytest.approx(
        sessions[-1]["samples"] / sessions[-1]["seconds"], rel=0.01)

    steps = _step_rows(run)
    assert sorted(steps) == list(range(epochs * STEPS))  # every step once, across both sessions
    curve = dict(read_metrics(run / "metrics.csv"))["train/loss_step"]
    assert [s for s, _ in curve][:3] == [0, 1, 2] and len(curve) == epochs * STEPS
    assert (run / "images" / "loss_curves.png").is_file()
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tb_steps = [e.step for e in events.Scalars("train/loss_step")]
    assert sorted(tb_steps) == list(range(epochs * STEPS))

    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch=0002.ckpt", "epoch=0003.ckpt", "epoch=0004.ckpt", "last.ckpt"]


def test_double_ctrl_c_exits_at_once_with_a_message(tmp_path):
    """Two SIGINTs within one (slow) step: exit 130 with a message naming the last checkpoint,
    and the session is in training.json."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _selfsup("train", "vae", "--out", str(run), "--epochs", "50", "--set",
                 "trainer.plots=false", *TINY, "--set", "model.hidden=[1500,1500]"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(run / "checkpoints" / "epoch=0000.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "second Ctrl-C" in err and "last.ckpt" in err and "--resume" in err, err
    assert "Traceback" not in err
    session = _sessions(run)[-1]
    assert session["aborted"] and session["global_step"] >= STEPS
    assert not list((run / "checkpoints").glob("last-v*"))


def test_ctrl_c_in_epoch_0_twice_leaves_one_last_checkpoint(tmp_path, monkeypatch):
    from helpers import assert_same_weights, weights

    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=3))
    full, _ = pipelines.train(config, tmp_path / "full")
    original_fit = engine.fit
    for step in (5, 10):  # interrupted in epoch 0, resumed, interrupted in epoch 0 again
        monkeypatch.setattr(pipelines, "fit", lambda *a, s=step, **k: original_fit(
            *a, **k, extra_callbacks=[InterruptAt(s)]))
        if step == 5:
            config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=3))
            _, result = pipelines.train(config, tmp_path / "run")
        else:
            _, result = pipelines.resume(tmp_path / "run")
        assert result.interrupted and result.global_step < STEPS
    monkeypatch.setattr(pipelines, "fit", original_fit)
    resumed, _ = pipelines.resume(tmp_path / "run")
    assert_same_weights(weights(full), weights(resumed))  # each resume continued mid-epoch 0
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["epoch=0000.ckpt", "epoch=0001.ckpt", "epoch=0002.ckpt", "last.ckpt"]


def test_double_ctrl_c_in_process_records_the_session(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    class DoubleInterrupt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == STEPS + 3:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    original_fit = engine.fit
    monkeypatch.setattr(pipelines, "fit", lambda *a, **k: original_fit(
        *a, **k, extra_callbacks=[DoubleInterrupt()]))
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=3))
    _, result = pipelines.train(config, tmp_path / "run")
    assert result.aborted and result.global_step == STEPS  # the newest checkpoint's step
    session = _sessions(tmp_path / "run")[-1]
    assert session["aborted"] and session["global_step"] == STEPS
    monkeypatch.setattr(pipelines, "fit", original_fit)
    _, result = pipelines.resume(tmp_path / "run")
    assert result.global_step == 3 * STEPS


def test_checkpoints_kept_and_space_check_counts_them(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=5),
                                    sets=["trainer.keep_checkpoints=2"])
    method, _ = pipelines.train(config, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    assert [p.name for p in folder.periodic_checkpoints()] == ["epoch=0003.ckpt",
                                                              "epoch=0004.ckpt"]
    one = engine.checkpoint_bytes(method)
    assert folder.last_checkpoint.stat().st_size <= one + 128 * 1024  # the estimate holds
    assert engine.needed_bytes(method, 10) - engine.needed_bytes(method, 0) == 10 * one
    usage = namedtuple("usage", "total used free")
    needed = engine.needed_bytes(method, 3)  # the default keep_checkpoints
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, needed - 1))
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    with pytest.raises(RunError, match="keep_checkpoints"):
        pipelines.train(config, tmp_path / "full")
    assert not (tmp_path / "full").exists()
    keep0 = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1),
                                   sets=["trainer.keep_checkpoints=0"])
    pipelines.train(keep0, tmp_path / "keep0")  # two checkpoints fewer: fits
    assert not RunFolder(tmp_path / "keep0").periodic_checkpoints()


# ---------------------------------------------------------------- item 2: options of a resume
def test_resume_options_are_applied_or_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "vae", "--out", str(run), "--epochs", "20", "--set",
                     "trainer.max_steps=30", "--set", "trainer.plots=false", *TINY]) == 0
    capsys.readouterr()
    # --epochs cannot extend a run capped by max_steps: refused, naming the cap
    assert cli.main(["train", "--resume", str(run), "--epochs", "30"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_steps=30" in err and "--set trainer.max_steps" in err
    # options that change what the run computes are refused, each named as given
    proc = subprocess.run(_selfsup("train", "--resume", str(run), "--data-dir", "/nonexistent",
                                   "--batch-size", "7", "--seed", "5", "--set", "optim.lr=5"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    for named in ("data.batch_size (--batch-size 7)", "seed (--seed 5)",
                  "optim.lr (--set optim.lr=5)"):
        assert named in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert cli.main(["train", "--resume", str(run), "--beta", "4"]) == 2
    assert "--beta" in capsys.readouterr().err
    assert json.loads((run / "training.json").read_text()).get("config_history") is None
    # --set trainer.max_steps extends it; --data-dir is applied (digits needs no files)
    assert cli.main(["train", "--resume", str(run), "--set", "trainer.max_steps=40",
                     "--data-dir", "elsewhere", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 40
    saved = RunFolder(run).load_config()
    assert saved.trainer.max_steps == 40 and saved.data.dir == "elsewhere"
    history = json.loads((run / "training.json").read_text())["config_history"]
    assert history[-1]["changes"] == {"trainer.max_steps": {"from": 30, "to": 40},
                                      "data.dir": {"from": "data", "to": "elsewhere"}}
    assert saved.trainer.progress_bar is False  # as trained: --json is for one session only
    # a run that has trained its budget says so instead of "training done" with 0 steps
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "already trained its budget" in capsys.readouterr().err


# --------------------------------------------------------------- item 13: failed starts, --out
def test_failed_starts_leave_nothing_and_folders_are_reused(tmp_path, capsys):
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1),
                                    sets=["optim.lr=1e30"])
    with pytest.raises(NonFiniteLossError):
        pipelines.train(config, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()  # diverged before its first checkpoint
    # a folder left by a killed start (config.yaml, no checkpoint): resume advises train --out,
    # and train --out reuses the folder
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    good = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    RunFolder(leftover).save_config(good)
    (leftover / "metrics.csv").write_text("step\n")
    assert cli.main(["train", "--resume", str(leftover)]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and f"--out {leftover}" in err
    assert cli.main(["train", "vae", "--out", str(leftover), "--epochs", "1",
                     "--set", "trainer.plots=false", *TINY]) == 0
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert RunFolder(leftover).has_checkpoint()
    # --out into a folder of other files refuses and writes nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("mine\n")
    assert cli.main(["train", "vae", "--out", str(other), *TINY]) == 2
    assert "not a selfsup run" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["metrics.csv"]
    assert (other / "metrics.csv").read_text() == "mine\n"
    # report runs/*: empty and unfinished folders are skipped with a note
    (tmp_path / "empty").mkdir()
    out = tmp_path / "r.md"
    assert cli.main(["report", str(leftover), str(tmp_path / "empty"), str(other),
                     "--out", str(out), "--format", "md"]) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and "empty" in err and out.read_text().count("| leftover |") == 0
    assert "leftover" in out.read_text()


def test_compare_reuse_goes_on_after_a_failed_method(tmp_path):
    from selfsup.compare import compare

    preset = tmp_path / "p.yaml"
    preset.write_text(
        "dataset: digits\nmethods: [vae, simvae]\nepochs: 1\nmax_steps: 3\nbatch_size: 64\n"
        "evals: [knn]\ngenerative_evals: []\nset: [trainer.plots=false]\n"
        "method_set: {simvae: [optim.lr=1.0e+30]}\n"
    )
    first = compare(str(preset), tmp_path / "cmp", formats=("md",), log=lambda m: None)
    assert set(first["failed"]) == {"simvae"} and "vae" in first["methods"]
    again = compare(str(preset), tmp_path / "cmp", existing="reuse", formats=("md",),
                    log=lambda m: None)
    assert set(again["failed"]) == {"simvae"} and "vae" in again["methods"]
    assert Path(again["reports"]["md"]).is_file()


# ------------------------------------------------------------------------ item 14: samples/s
def test_samples_per_second_counts_samples(tmp_path):
    from selfsup.data.base import DataInfo
    from selfsup.methods import method_class

    # a batch larger than the dataset is refused (issue 20 item 11); full batches are counted
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=2))
    small = pipelines.load_split(config, "train").subset(torch.arange(50))
    method = method_class("vae")(config, DataInfo.of(small))
    with pytest.raises(ConfigError, match="larger than the training split"):
        engine.fit(method, small, None, tmp_path / "small")
    small = pipelines.load_split(config, "train").subset(torch.arange(100))
    result = engine.fit(method, small, None, tmp_path / "full-batches")
    assert result.global_step == 2 and result.samples == 128  # one batch of 64 per epoch
    assert result.samples_per_second == pytest.approx(128 / result.seconds)
    # hvae symmetric: two optimizer steps per batch, each sample counted once
    config = pipelines.build_config("hvae", "digits", sets=[
        "model.objective=symmetric", "trainer.epochs=1", "trainer.plots=false",
        "trainer.progress_bar=false", "data.batch_size=64"])
    _, result = pipelines.train(config, tmp_path / "hvae")
    assert result.global_step == 2 * STEPS and result.samples == STEPS * 64
    assert _sessions(tmp_path / "hvae")[0]["samples"] == STEPS * 64


# ------------------------------------------------------------------ item 12: read-only runs
@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` unwritable, also for root (immutable attribute); skip where impossible."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (chattr +i unsupported)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)


def test_read_only_run_eval_and_resume_say_so(tmp_path, capsys):
    run = tmp_path / "run"
    config = pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1))
    pipelines.train(config, run)
    capsys.readouterr()
    with read_only(run):
        started = time.perf_counter()
        assert cli.main(["eval", "knn", "--run", str(run)]) == 2
        err = capsys.readouterr().err
        assert "Cannot write into" in err and "Nothing was computed" in err
        assert err.count("\n") == 1 and time.perf_counter() - started < 60
        assert cli.main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert "resuming a run writes" in err and "cp -r" in err and err.count("\n") == 1
    assert not (run / "eval").exists()
