"""Issue 20 items 5-7 replayed on the command line: image folders train, evaluate, generate,
compare and check end to end (the documented class-folder layout, tiny generated PNGs)."""

from __future__ import annotations

import json
import subprocess
import sys

from fixtures import write_imagefolder

SMALL = ["--set", "data.image_size=16", "--epochs", "1", "--batch-size", "8",
         "--set", "trainer.num_threads=1", "--set", "trainer.embedding_plot=pca"]


def selfsup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, timeout=600
    )


def test_imagefolder_run_evaluates_and_generates(tmp_path):
    """Item 5: eval linear|knn use the class folders' labels; item 6: generate works."""
    write_imagefolder(tmp_path, n_per_class=8, size=20)  # 3 classes, train/ and test/
    run = tmp_path / "run"
    proc = selfsup("train", "vae", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
                   "--out", str(run), "--json", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["global_step"] == 24 // 8
    for probe in ("linear", "knn"):
        proc = selfsup("eval", probe, "--run", str(run), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert result["dataset"] == "imagefolder" and result["n_test"] == 24
        assert (run / "eval" / f"{probe}.json").is_file()
    proc = selfsup("generate", "--run", str(run), "--out", str(tmp_path / "gen"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(proc.stdout)
    assert (tmp_path / "gen" / "reconstructions.png").is_file()
    assert written["samples"].endswith("samples.png")
    assert (run / "images" / "reconstructions.png").is_file()  # drawn while training, too


def test_compare_on_an_image_folder_writes_a_report(tmp_path):
    """Item 5: `compare --dataset imagefolder` runs every method and writes the report."""
    write_imagefolder(tmp_path, n_per_class=8, size=20)
    out = tmp_path / "cmp"
    proc = selfsup("compare", "--preset", "digits-all", "--dataset", "imagefolder",
                   "--data-dir", str(tmp_path), "--methods", "vae,vicreg", "--max-steps", "2",
                   "--batch-size", "8", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert set(summary["methods"]) == {"vae", "vicreg"} and summary["failed"] == {}
    assert all(row["linear"] is not None for row in summary["methods"].values())
    assert (out / "report.html").is_file() and "vicreg" in (out / "report.md").read_text()


def test_data_check_names_a_non_image_and_accepts_a_missing_test_split(tmp_path):
    """Item 7: a non-image .png in train is invalid (named); no test/ is usable with a note."""
    write_imagefolder(tmp_path, n_per_class=2, size=8, test_dir=None)
    proc = selfsup("data", "check", "imagefolder", "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["valid"] and report["splits"] == {"train": 6}
    assert "no test split" in report["message"] and "training works without it" in (
        report["message"])

    fake = tmp_path / "imagefolder" / "train" / "b" / "notes.png"
    fake.write_text("this is not an image")
    proc = selfsup("data", "check", "imagefolder", "--data-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "NOT usable" in proc.stdout and str(fake) in proc.stdout


def test_broken_image_at_training_time_exits_2_naming_the_file(tmp_path):
    """Item 7: the file is named, no DataLoader worker traceback."""
    written = write_imagefolder(tmp_path, n_per_class=4, size=20, test_dir=None)
    broken = written["train"]["paths"][5]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    proc = selfsup("train", "vicreg", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "run"), "--set", "data.num_workers=1", *SMALL)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(broken) in proc.stderr
    assert "Traceback" not in proc.stderr and "worker" not in proc.stderr.lower()
