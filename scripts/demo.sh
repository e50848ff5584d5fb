#!/usr/bin/env bash
# The pipeline on a real pretrained model, on CPU: SmolLM2-135M (a dense Llama) -> 3-rank PT
# checkpoint (track t = tensor-parallel shard t) -> `mpiexec -n 3` under each merge schedule.
#   sublayer: 2L = 60 merges per forward pass, exactly the dense model (tensor parallelism);
#   block:    L/D = 30 merges per forward pass (D=1): the "PT-ified" dense model, which needs
#             PT training to be good, so expect degraded text.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-work/demo}
PROMPT=${PROMPT:-"The capital of France is"}
mkdir -p "$WORK"

if [ ! -d "$WORK/smollm2-hf" ]; then
    python scripts/export_smollm2.py --output_dir "$WORK/smollm2-hf"
fi
python scripts/convert_checkpoint.py --model_dir "$WORK/smollm2-hf" --output_dir "$WORK/smollm2-3rank" \
    --num_tracks 3 --workers 3 --force
for schedule in sublayer block; do
    echo
    echo "== mpiexec -n 3 scripts/run.py --schedule $schedule"
    start=$(python -c "import time; print(time.time())")
    mpiexec -n 3 python scripts/run.py --engine_dir "$WORK/smollm2-3rank" --tokenizer_dir "$WORK/smollm2-3rank" \
        --input_text "$PROMPT" --max_output_len 32 --schedule "$schedule" --threads 1
    python -c "import time, os; print(f'wall time: {time.time() - $start:.1f} s (3 ranks on {os.cpu_count()} cores, start-up included)')"
done
