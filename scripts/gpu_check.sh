#!/usr/bin/env bash
# GPU check of the PyTorch runtime on a machine with ONE NVIDIA GPU and a preinstalled PyTorch with
# CUDA and NCCL (any recent torch; transformers, safetensors, numpy and tqdm must be importable).
# No installs, no downloads; finishes in under 5 minutes. Results: $OUT/gpu_check.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work/gpu_check}
python3 - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "transformers", "safetensors", "numpy", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: the GPU check needs these preinstalled packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PYTHONPATH=. PYTHONUNBUFFERED=1 timeout 290 python3 scripts/gpu_check.py --out "$OUT" "$@"
