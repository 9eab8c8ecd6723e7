#!/usr/bin/env bash
# The speed benchmark on a lent GPU machine: run there after benchmarks/gpu_prepare.sh here.
# Extra arguments go to benchmarks.speed (e.g. --parts syncs resnet32). Results land in $OUT
# (the device tool brings them back) or in benchmarks/results/ when OUT is unset.
set -euo pipefail
cd "$(dirname "$0")/.."
site=""
if [ -d .whl ]; then
    # wheels are zip archives of importable packages; antlr4's runtime (pure Python) comes as an
    # sdist whose package sits under src/: unpack both, nothing is built or fetched
    mkdir -p /tmp/site
    for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
    for s in .whl/*.tar.gz; do tar xzf "$s" -C /tmp/site --strip-components=2 --wildcards '*/src/*'; done
    site=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD${site:+:$site}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', \
lightning.__version__, 'cuda', torch.cuda.is_available())"
out=${OUT:-benchmarks/results}
python3 -m benchmarks.speed --device "${DEVICE:-cuda}" --data-dir data --workers 8 \
    --out "$out/speed_${DEVICE:-cuda}.json" "$@"
