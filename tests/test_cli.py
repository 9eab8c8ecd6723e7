"""The command line as a user meets it: real subprocesses, exit codes, one-paragraph errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fixtures

TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--set",
    "model.hidden=[32]",
    "--set",
    "model.latent_dim=4",
    "--set",
    "trainer.plots=true",
    "--no-progress",
]


def selfsup(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def _assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("selfsup: error:")
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_demo_trains_probes_and_draws(tmp_path):
    """`selfsup demo`, the README's first command, with fewer epochs."""
    out = tmp_path / "demo"
    proc = selfsup("demo", "--epochs", "3", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["epochs"] == 3 and summary["run_dir"] == str(out)
    assert summary["linear_probe_accuracy"] > 0.8  # 10 digit classes: chance is 0.1
    for name in ("reconstructions.png", "samples.png", "embedding.png"):
        assert (out / "images" / name).is_file(), name


def test_train_eval_generate_json(tmp_path):
    run = tmp_path / "run"
    proc = selfsup("train", "vae", "--dataset", "digits", "--out", str(run), "--json", *TINY)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["global_step"] == 1438 // 64 and summary["run_dir"] == str(run)
    assert (run / "images" / "reconstructions.png").is_file()
    for probe in ("linear", "knn"):
        proc = selfsup("eval", probe, "--run", str(run), "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["probe"] == probe and 0.0 <= result["accuracy"] <= 1.0
    proc = selfsup("eval", "linear", "--run", str(run), "--protocol", "sgd", "--epochs", "3",
                   "--batch-size", "128", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["protocol"] == "sgd-3-epochs" and result["lr"] == 0.05
    _assert_clean_error(selfsup("eval", "knn", "--run", str(run), "--epochs", "3"), "--epochs")
    proc = selfsup(
        "generate", "--run", str(run), "--n", "16", "--out", str(tmp_path / "g"), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g" / "samples.png").is_file()
    proc = selfsup("train", "--resume", str(run), "--epochs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["global_step"] == 2 * (1438 // 64)


def test_train_on_mnist_fixture_files(tmp_path):
    fixtures.write_idx_dataset(tmp_path / "data", "mnist", n_train=128, n_test=64)
    proc = selfsup(
        "train",
        "vae",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--json",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    proc = selfsup("eval", "linear", "--run", str(tmp_path / "run"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_test"] == 64


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "nosuchmethod"], ["Unknown method", "vae"]),
        (
            ["train", "vae", "--dataset", "mnist", "--data-dir", "/nonexistent"],
            ["train-images-idx3-ubyte", "--download"],
        ),
        (["train", "vae", "--set", "optim.lr=-1"], ["lr"]),
        (["train", "vae", "--frobnicate", "3"], ["--frobnicate"]),
        (["train", "vae", "--config", "/nonexistent.yaml"], ["/nonexistent.yaml"]),
        (["eval", "linear", "--run", "/tmp"], ["not a selfsup run folder"]),
        (["train", "--resume", "/tmp"], ["not a selfsup run folder"]),
        (  # a decoder that cannot produce 8x8 images: incompatible dataset/network
            ["train", "vae", "--dataset", "digits", "--decoder", "resnet", "--out", "r"],
            ["divisible by 16", "'conv' decoder"],
        ),
    ],
)
def test_errors_are_one_paragraph_with_exit_code_2(args, fragments, tmp_path):
    _assert_clean_error(selfsup(*args, cwd=tmp_path), *fragments)


def test_corrupt_checkpoint_and_wrong_method(tmp_path):
    run = tmp_path / "run"
    assert selfsup("train", "vae", "--out", str(run), *TINY).returncode == 0
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 100)
    _assert_clean_error(selfsup("eval", "linear", "--run", str(run)), "corrupt")


def test_data_list_and_check(tmp_path):
    proc = selfsup("data", "list", "--json")
    names = {row["name"] for row in json.loads(proc.stdout)["datasets"]}
    assert {"digits", "mnist", "fashionmnist", "cifar10", "stl10", "imagefolder"} <= names
    proc = selfsup("data", "check", "mnist", "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["valid"] is False
    fixtures.write_idx_dataset(tmp_path, "mnist", n_train=16, n_test=8)
    proc = selfsup("data", "check", "mnist", "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["valid"] is True


def test_help_lists_method_options():
    proc = selfsup("train", "vae", "--help")
    assert proc.returncode == 0 and "--latent-dim" in proc.stdout and "--beta" in proc.stdout


def test_ddp_two_processes_on_cpu(tmp_path):
    """`--strategy ddp` launches a second process (gloo); both train, rank 0 writes the run."""
    run = tmp_path / "ddp"
    proc = selfsup(
        "train",
        "vae",
        "--dataset",
        "digits",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--out",
        str(run),
        "--json",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 1438 // 64  # each global batch of 64 split 32 + 32
    assert (run / "checkpoints" / "last.ckpt").is_file()
