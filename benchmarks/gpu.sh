#!/usr/bin/env bash
# GPU benchmark for one large NVIDIA GPU: installs the CUDA build of jax into a fresh
# virtual environment, checks that jax sees the GPU, runs the shift-invariant layer
# grid of `redunet bench` sized to finish in under 8 minutes, and writes bench.json,
# bench.png and the log into $OUT (default: benchmarks/results/gpu).
#
# Usage (from anywhere): OUT=/path/to/folder bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install -q -U pip
python -m pip install -q -e .
# The CUDA plugin must match the jax version the project resolved.
JAX_VERSION="$(python -c 'import jax; print(jax.__version__)')"
python -m pip install -q "jax[cuda12]==${JAX_VERSION}"
python - <<'PY'
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
if jax.default_backend() != "gpu":
    raise SystemExit("no GPU visible to jax: check the driver and the CUDA wheels")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

# Larger m and longer signals than the CPU grid; the NumPy loop runs on the host
# and is skipped where one call is predicted to take over 30 s.
timeout 480 redunet bench \
    --m 4000 --channels 32 --classes 10 \
    --lengths 64 128 256 512 1024 2048 \
    --channel-grid 8 16 32 64 128 --channel-length 256 \
    --memory-layers 1 25 \
    --out "$OUT"
