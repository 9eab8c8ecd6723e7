"""``selfsup demo``: a small VAE trained on scikit-learn's 8x8 digits (embedded, no download),
then a linear probe on the frozen latent means of the training digits, scored on the test digits.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selfsup.config import RunConfig
from selfsup.errors import RunError

METHOD, DATASET = "vae", "digits"


def demo_config(epochs: int = 30, progress_bar: bool = True) -> RunConfig:
    """The demo's run config: the ``vae/digits`` preset (seed 0) with ``epochs`` epochs and
    figures at a third, two thirds and the end (per-epoch figures would double the time)."""
    from selfsup import pipelines

    return pipelines.build_config(
        METHOD,
        DATASET,
        flags={
            "trainer": {"epochs": epochs, "progress_bar": progress_bar,
                        "plot_every": max(1, epochs // 3)},
            "data": {"batch_size": 64},
        },
    )


def run_demo(out: str | Path = "runs/demo", epochs: int = 30,
             progress_bar: bool = True) -> dict[str, Any]:
    """Train the demo into ``out`` (replacing an earlier demo run there), probe it, and return
    a summary with the linear-probe test accuracy."""
    from selfsup import pipelines
    from selfsup.rundir import RunFolder

    out = Path(out)
    if RunFolder(out).is_run():
        earlier = pipelines.load_run_config(out)
        if (earlier.method, earlier.data.name) != (METHOD, DATASET):
            raise RunError(
                f"{out} holds a {earlier.method} run on {earlier.data.name}, not an earlier demo, "
                "so the demo does not replace it. Choose another folder with --out."
            )
        shutil.rmtree(out)
    config = demo_config(epochs, progress_bar)
    method, result = pipelines.train(config, out)
    evaluation = pipelines.evaluate(method.eval(), "linear")
    return {
        "method": METHOD,
        "dataset": DATASET,
        "epochs": result.epochs,
        "train_seconds": round(result.seconds, 2),
        "linear_probe_accuracy": evaluation["accuracy"],
        "run_dir": str(out),
        "images": str(RunFolder(out).image_dir),
    }
