#!/usr/bin/env bash
# GPU checks on a machine with ONE NVIDIA GPU and a preinstalled PyTorch with CUDA and NCCL (any recent
# torch; transformers, safetensors, numpy and tqdm must be importable). No installs, no downloads.
# Results in $OUT (default work/gpu_check).
#
#   scripts/gpu_check.sh [--stage runtime|plugins|perf]... [gpu_check.py flags]     (default: --stage runtime)
#
# runtime  scripts/gpu_check.py: CUDA vs CPU parity, NCCL inside a CUDA graph, decode speed (< 5 min).
# plugins  libpt_trtllm_plugins.so (plugins/): scripts/gpu_check_plugins.py's kernels, latency and one-shot
#          checks (T = 2, 3, 4 processes on the one GPU), then run.py --comm pt_plugin (one-shot, T = 2
#          and 3 on the one GPU) against the CPU mpi4py run of the same checkpoint (sized for 4 min, not
#          yet timed). It needs what scripts/gpu_carry.sh prepares on a development machine in work/carry
#          (carry it): the built library and the mpich + mpi4py wheels unpacked (the device has no pip).
# perf     scripts/gpu_perf.py: the latency model's inputs for one pt-30b-d8 track, bf16: decode steps at
#          batch 1, 8, 64, 256 with a 1024-token cache (CUDA graphs; compiled too at batch 1), the same
#          steps in a 4096-position cache over the whole cache and with --kv_buckets, prefill of 1k-16k tokens, the measured read bandwidth, the top kernels of a batch-1 step per mode
#          (torch.profiler) -> $OUT/perf.json; then one pt-moe-afm track at batch 1 and 8 (the bound
#          counting the routed experts only) -> $OUT/perf-moe.json (sized for 6 min, not yet timed); commit them as
#          docs/results/perf-<gpu>.json (and perf-moe-<gpu>.json) and pass the first to
#          scripts/latency_model.py --steps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work/gpu_check}
stages=() rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stages+=("$2"); shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=(runtime)
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
export PYTHONUNBUFFERED=1
failed=0

stage_runtime() {
  PYTHONPATH=. timeout 290 python3 scripts/gpu_check.py --out "$OUT" "${rest[@]}"
}

plugins_environment() {
  local carry=work/carry pyv
  pyv=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  export PT_TRTLLM_PLUGINS_LIB=${PT_TRTLLM_PLUGINS_LIB:-$PWD/$carry/plugins/libpt_trtllm_plugins.so}
  [ -f "$PT_TRTLLM_PLUGINS_LIB" ] || { echo "error: $PT_TRTLLM_PLUGINS_LIB missing: run scripts/gpu_carry.sh here and carry work/carry" >&2; return 1; }
  [ -d "$carry/mpi4py-$pyv" ] || { echo "error: $carry/mpi4py-$pyv missing: scripts/gpu_carry.sh prepares cp310..cp313" >&2; return 1; }
  export PYTHONPATH=$PWD:$PWD/$carry/mpi4py-$pyv
  export PATH=$PWD/$carry/mpich/bin:$PATH
  # the library's libnccl.so.2 and libcudart.so.13: the ones of the device's torch
  local libs
  libs=$(python3 - <<'PY'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
dirs = {os.path.dirname(p) for pat in ("libnccl.so.2", "libcudart.so.13*") for p in glob.glob(f"{site}/nvidia/**/{pat}", recursive=True)}
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH=$libs:$PWD/$carry/mpich/lib:${LD_LIBRARY_PATH:-}
}

stage_perf() {
  local rc=0
  PYTHONPATH=. timeout 240 python3 scripts/gpu_perf.py --profile --out "$OUT/perf.json" || rc=1
  # the AFM-shaped PT-MoE track (37 GB of bf16 weights): CUDA graphs only, the bound counts the routed experts
  PYTHONPATH=. timeout 120 python3 scripts/gpu_perf.py --preset pt-moe-afm --batches 1,8 --modes cuda_graph \
    --prefill_tokens 1024,4096 --serve_cache 0 --profile --out "$OUT/perf-moe.json" || rc=1
  return $rc
}

stage_plugins() {
  plugins_environment || return 1
  local rc=0 T ck run
  timeout 90 python3 scripts/gpu_check_plugins.py kernels --out "$OUT" || rc=1
  timeout 40 python3 scripts/gpu_check_plugins.py latency --out "$OUT" || rc=1
  for T in 2 3 4; do
    timeout 40 mpiexec -n $T python3 scripts/gpu_check_plugins.py oneshot --out "$OUT" || rc=1
  done
  for T in 2 3; do
    ck=$OUT/tiny-T$T
    python3 -c "from pt_trtllm.convert.random_checkpoint import write_random_checkpoint as w; w('$ck', 'tiny', seed=$T, num_tracks=$T, num_attention_heads=12, num_key_value_heads=6, intermediate_size=384)"
    run="scripts/run.py --engine_dir $ck --input_ids 5,17,300,42,7;9,8,7,6,5 --max_output_len 16"
    timeout 60 mpiexec -n $T python3 $run --device cpu --threads 1 --output_json "$ck/cpu.json" --output_logits "$ck/cpu.npy" || rc=1
    timeout 60 mpiexec -n $T python3 $run --device cuda --comm pt_plugin --plugin_transport oneshot \
      --output_json "$ck/gpu.json" --output_logits "$ck/gpu.npy" || rc=1
    python3 scripts/gpu_check_plugins.py compare --out "$OUT" --cpu_json "$ck/cpu.json" --gpu_json "$ck/gpu.json" \
      --cpu_logits "$ck/cpu.npy" --gpu_logits "$ck/gpu.npy" || rc=1
    rm -rf "$ck"
  done
  return $rc
}

for stage in "${stages[@]}"; do
  case "$stage" in
    runtime) stage_runtime || failed=1 ;;
    plugins) stage_plugins || failed=1 ;;
    perf) stage_perf || failed=1 ;;
    *) echo "error: unknown stage $stage (runtime, plugins, perf)" >&2; exit 2 ;;
  esac
done
exit $failed
