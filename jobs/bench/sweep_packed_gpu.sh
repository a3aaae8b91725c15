#!/usr/bin/env bash
# Packed variants on one GPU (issue 14): the whole-sweep benchmark with packed tasks holding
# one GPU (pack_max 64: the 64 demo MLPs as one task) against one task per variant at
# num_gpus 0.25 (four share the GPU), --no-analyze, same machine, one after the other.
# Run on a GPU node from the repository root (prepared for the device tool; ~5-8 min):
#     bash jobs/bench/sweep_packed_gpu.sh [EPOCHS]   # default 2000
# Results: bench-out/sweep_packed_gpu*.json and the printed lines.
set -euo pipefail
EPOCHS="${1:-2000}"
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" jobs/bench/packed_train.py --epochs 50 --members 32 --unpacked 2 || true   # CPU reference, in process
"$PY" jobs/bench/sweep_packed.py --epochs "$EPOCHS" --pack-max 64 --gpus-auto 1 --gpus-off 0.25 \
    --out bench-out/sweep_packed_gpu.json
