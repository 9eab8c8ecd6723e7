"""``selfsup generate``: image grids, or a folder of samples, from a generative run.

Everything that can be refused is checked before anything is written: the number of images, the
run, whether it can generate (and in that mode), and that the output folder is writable. So a
bad request leaves no empty folder behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError


def generate(
    run_dir: str | Path,
    out: str | Path,
    n: int = 64,
    mode: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Without ``mode``: ``n`` test images with their reconstructions and ``n`` samples, as
    grids in ``out``. With ``mode`` (``random``: codes from the prior; ``limiting``: the
    encoder-decoder Markov chain, ``steps`` transitions): ``n`` sample PNGs in ``out/samples/``
    and ``out/grid.png``. Returns the written paths."""
    from selfsup import pipelines
    from selfsup.engine import check_output_dir

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"The number of images must be a positive integer, got {n!r}.")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {steps}.")
    if mode is not None and mode not in pipelines.GENERATE_MODES:
        raise ConfigError(f"Unknown generation mode {mode!r}; use random or limiting.")
    method = pipelines.load_run(run_dir, device=device)
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    if mode == "limiting" and not hasattr(method, "sample_limiting"):
        raise ConfigError(
            f"--mode limiting needs a method with an encoder-decoder Markov chain sampler "
            f"(hvae); {method.name} supports --mode random."
        )
    out = Path(out)
    check_output_dir(out, needed_bytes=n * 16 * 2**10 + 2**20)
    if mode is not None:
        images = pipelines.generate_images(method, n, mode, steps, seed=seed)
        return {**pipelines.save_image_folder(images, out), "mode": mode}
    from selfsup.plots import save_generative_grids

    spec = pipelines.dataset_spec(method.config.data.name)
    dataset = pipelines.load_split(method.config, spec.test_split, data_dir)
    paths = save_generative_grids(method, dataset, out, n=n)
    return {k: str(v) for k, v in paths.items()}
