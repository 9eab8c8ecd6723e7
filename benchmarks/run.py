"""One entry point for every benchmark: ``python -m benchmarks.run NAME [ARGS...]`` from the
repository root, or ``python PATH/TO/benchmarks/run.py NAME [ARGS...]`` from any folder.

``python -m benchmarks.run`` alone lists the benchmarks. Each writes a JSON result (machine, torch
version, device, figures) under the repository's ``benchmarks/results/`` and prints a table;
``ARGS`` go to the benchmark itself (``python -m benchmarks.run NAME --help`` shows them).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from anywhere: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCHMARKS: dict[str, tuple[str, str]] = {
    "speed": ("benchmarks.speed", "all speed-* parts (on a CPU: not resnet32, syncs), one JSON"),
    "speed-vicreg": ("benchmarks.speed.vicreg", "VICReg: selfsup vs torchvision/lightly per-image"),
    "speed-toggles": ("benchmarks.speed.toggles", "VICReg with each speed feature on alone"),
    "speed-simvae": ("benchmarks.speed.simvae", "SimVAE MLP: FLOPs, fraction of peak, bf16"),
    "speed-methods": ("benchmarks.speed.methods", "every method: samples/s, FLOPs, memory"),
    "speed-tta": ("benchmarks.speed.tta", "SimCLR: time to 97% linear accuracy on MNIST"),
    "speed-resnet32": ("benchmarks.speed.resnet32", "ResNet-18 on 32 px: selfsup vs reference"),
    "speed-syncs": ("benchmarks.speed.syncs", "host-device synchronizations per step (GPU)"),
    "augment": ("benchmarks.augment_speed", "BatchAugment vs kornia vs per-image torchvision"),
    "simvae-cifar-augment": ("benchmarks.simvae_cifar_augment",
                             "SimVAE CIFAR-10 augmentation: released 256 px order vs 32 px crop"),
    "vae-mnist": ("benchmarks.vae_mnist", "VAE on MNIST: linear and kNN accuracy"),
    "generative-mnist": ("benchmarks.generative_mnist",
                         "VAE, augmented VAE, SimVAE, AAVAE on MNIST: linear/MLP/kNN"),
    "ssl-mnist": ("benchmarks.ssl_mnist", "VICReg, BYOL, SimCLR, Barlow Twins on MNIST"),
    "hvae-mnist": ("benchmarks.hvae_mnist", "hierarchical VAE: ELBO vs symmetric learning, FID"),
    "dsprites-bottleneck": ("benchmarks.dsprites_bottleneck",
                            "BYOL continuous vs softmax bottleneck, OOD factor probes"),
    "imagefolder-scale": ("benchmarks.imagefolder_scale",
                          "streamed image folders: images/s and peak memory at 10k/25k/50k JPEGs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m benchmarks.run NAME [ARGS...]\n\nbenchmarks:")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<20} {what}")
        return 0
    name = argv[0].replace("_", "-")
    if name not in BENCHMARKS:
        print(f"unknown benchmark {argv[0]!r}; choose one of {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    sys.argv = [f"benchmarks.run {name}", *argv[1:]]
    module.main(argv[1:]) if _takes_argv(module.main) else module.main()
    return 0


def _takes_argv(fn: object) -> bool:
    import inspect

    return bool(inspect.signature(fn).parameters)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
