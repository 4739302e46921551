#!/usr/bin/env bash
# The device check of issue 18, in one script that fits in 10 minutes of device time.
#
#     bash bench/gpu.sh                 # CUDA: 1B-class random config + embedded model, LoRA vs QLoRA
#     PIPELINE=1 bash bench/gpu.sh      # also time the default pipeline on the GPU (optional: several minutes)
#     bash bench/gpu.sh --models small --steps 2    # extra arguments go to bench/gpu_bench.py
#     WHEELS=.whl SHAPES=.devcarry/shapes bash bench/gpu.sh --default-sft   # a bare CUDA machine (below)
#     bash bench/gpu.sh --models 1b --seq 1024 --padded --batch 4 --gradient-checkpointing   # weight-bound peak
#     bash bench/gpu.sh --models 1b --batch 64 --steps 5 --profile                          # top operators
#
# A bare machine with PyTorch and CUDA but none of tuneline's packages and no registry (the device machines
# lent to sessions): WHEELS names a folder of cp312 wheels (the lock's trl, transformers, peft, datasets,
# bitsandbytes, pydantic, ...; not huggingface_hub: the lock's needs httpx2, the machine's own works) installed
# into a fresh temp dir first; SHAPES a `gpu_bench.py --write-shapes` dir, so that no model file has to travel (docs/results/2026-12-04-gpu.md says how the run was made).
#
# Prints, per model: LoRA vs QLoRA peak memory (goal: QLoRA <= 0.45x LoRA), tokens/s and MFU for SFT, and
# which CUDA paths the training took (paged AdamW for QLoRA, bf16, the attention implementation). Without
# CUDA it falls back to a small random config on the CPU, prints the same table with "cpu" and skips QLoRA
# with the reason (tests/unit/test_gpu_bench_fallback.py runs that). Figures go to $OUT/gpu_bench.json too
# when $OUT is set (the device runner brings that folder back).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ -n "${WHEELS:-}" ]; then
  rm -rf /tmp/tuneline-site  # a warm machine keeps the last call's: a wheel left out must not stay installed
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tuneline-site \
    "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/tuneline-site${PYTHONPATH:+:$PYTHONPATH}
fi
ARGS=("$@")
[ -n "${SHAPES:-}" ] && ARGS+=(--shapes "$SHAPES")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 ZENML_ANALYTICS_OPT_IN=false TOKENIZERS_PARALLELISM=false
JSON=()
[ -n "${OUT:-}" ] && JSON=(--json "$OUT/gpu_bench.json")

"$PY" -c 'import torch, transformers, trl, peft, bitsandbytes, datasets
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "", "| transformers", transformers.__version__,
      "trl", trl.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__,
      "datasets", datasets.__version__)'
start=$(date +%s)
timeout "${BENCH_TIMEOUT:-420}" "$PY" bench/gpu_bench.py "${JSON[@]}" "${ARGS[@]}"
echo "gpu_bench: $(( $(date +%s) - start ))s"

# The default pipeline's wall time on this device: optional, it has to fit in what is left of the 10 minutes.
if [ "${PIPELINE:-0}" = 1 ]; then
  start=$(date +%s)
  if timeout "${PIPELINE_TIMEOUT:-480}" make run >"${OUT:-/tmp}/pipeline.log" 2>&1; then
    echo "default pipeline (make run): $(( $(date +%s) - start ))s wall"
  else
    echo "default pipeline (make run): did not finish (rc $?) in $(( $(date +%s) - start ))s; log: ${OUT:-/tmp}/pipeline.log"
  fi
else
  echo "default pipeline: skipped (PIPELINE=1 times 'make run' on this device)"
fi
