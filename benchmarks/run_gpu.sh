#!/usr/bin/env bash
# GPU benchmark run (for a lent GPU machine: PyTorch with CUDA, no TensorRT, no network).
# Usage: benchmarks/run_gpu.sh [quick|moderate|full]   (default: moderate)
# Writes benchmarks/results/<date>-cuda-<gpu>/{results.json,report.md,*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
MODE=${1:-moderate}

"$PY" - <<'PYEOF'
import importlib.util, sys
import torch
missing = [m for m in ("open_clip", "pytest_benchmark", "psutil", "matplotlib") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing} (pip install open_clip_torch pytest-benchmark psutil matplotlib)")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: this script is for a GPU machine")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| TensorRT:",
      importlib.util.find_spec("tensorrt") is not None)
PYEOF

DEV=$("$PY" -c "import torch; print('cuda-' + torch.cuda.get_device_name(0).replace(' ', '-'))")
OUT="benchmarks/results/$(date +%F)-${DEV}"
mkdir -p "$OUT"
# GPU encoder grid (baseline, torch fp32/fp16/bf16, compile, CUDA graphs, TensorRT where installed), GPU GEMM
# peaks, the CPU peak and the parity check; nothing CPU-heavy (run `pytest benchmarks/` for the CPU suite).
"$PY" -m pytest benchmarks/ -q -rs --bench-mode "$MODE" -p no:cacheprovider \
    -k "gpu or peak or parity" --benchmark-json="$OUT/results.json"
"$PY" benchmarks/report.py "$OUT/results.json" -o "$OUT"
echo "results in $OUT"
