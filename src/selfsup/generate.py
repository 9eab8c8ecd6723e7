"""``selfsup generate``: image grids, or a folder of samples, from a generative run.

Everything that can be refused is checked before anything is written: the number of images, that
the output folder can be written, the run, and whether it can generate (in that mode). So a bad
request leaves no empty folder behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError, RunError


def generate(
    run_dir: str | Path,
    out: str | Path,
    n: int = 64,
    mode: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Without ``mode``: ``n`` test images with their reconstructions and ``n`` samples, as
    grids in ``out``. With ``mode`` (``random``: codes from the prior; ``limiting``: the
    encoder-decoder Markov chain, ``steps`` transitions): ``n`` sample PNGs in ``out/samples/``
    and ``out/grid.png``. ``progress``: a bar on stderr while sampling. Returns the written
    paths."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"The number of images must be a positive integer, got {n!r}.")
    out = Path(out)
    check_writable(out)
    from selfsup import pipelines
    from selfsup.engine import check_output_dir

    method = pipelines.load_run(run_dir, device=device)
    if mode is not None:
        from selfsup.methods.sampling import generate_images, save_image_folder

        images = generate_images(method, n, mode, steps, seed=seed, progress=progress)
        check_output_dir(out, needed_bytes=images.numel() + 2**20)
        return {**save_image_folder(images, out), "mode": mode}
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    from selfsup.plots import save_generative_grids

    check_output_dir(out, needed_bytes=2**20)
    spec = pipelines.dataset_spec(method.config.data.name)
    dataset = pipelines.load_split(method.config, spec.test_split, data_dir)
    paths = save_generative_grids(method, dataset, out, n=n)
    return {k: str(v) for k, v in paths.items()}


def check_writable(folder: Path) -> None:
    """Refuse, creating nothing, a folder that could not be created or written: its nearest
    existing ancestor must be a folder this process may write into."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(
            f"Cannot write into {folder} ({existing} is not a writable folder), but generate "
            "writes its images there. Choose a writable folder with --out, or fix its permissions."
        )
