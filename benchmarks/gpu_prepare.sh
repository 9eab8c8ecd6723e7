#!/usr/bin/env bash
# Prepare this checkout for the speed benchmark on a lent GPU machine (the `device` tool).
#
# The GPU image has PyTorch, Lightning, torchvision and scikit-learn but not omegaconf (nor
# lightly, the optional VICReg reference), and it reaches no registry: their wheels travel in
# .whl/. The machine receives only the repository, not ../shared: MNIST travels in data/.
# Both folders are git-ignored and must be named in the run's `carry`:
#   carry: [".whl", "data"]
#   command: bash benchmarks/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${MNIST:-../shared/data/MNIST/raw}
mkdir -p .whl data/MNIST/raw
cp "$MNIST"/*-ubyte.gz data/MNIST/raw/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl \
    omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 lightly==1.6.0 \
    || python3 -m pip download -q --no-deps -d .whl omegaconf==2.3.0 \
        antlr4-python3-runtime==4.9.3 lightly==1.6.0
du -sh .whl data
