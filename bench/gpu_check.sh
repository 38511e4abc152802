#!/usr/bin/env bash
# One prepared check for a CUDA machine: the CUDA tests, then ViT-B-32 training and
# inference throughput and model FLOP utilisation against OpenCLIP in the same process,
# then the evaluator's throughput against CLIP_benchmark's loop on the GPU.
#   bash bench/gpu_check.sh            # writes its log to ${OUT:-.}/gpu_check.log
# PYTHON picks the interpreter (default python3); each step has its own time limit so
# that one hung step cannot eat the machine's lease.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
log="${OUT:-.}/gpu_check.log"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'bf16', torch.cuda.is_bf16_supported(), 'flash', torch.backends.cuda.flash_sdp_enabled())"
  timeout 150 "$py" -m pytest -q -rs tests/cuda -p no:cacheprovider
  # Peak bf16 dense tensor TFLOP/s of the card for MFU; H100/H200 SXM: 989.
  timeout 170 "$py" bench/peer_throughput.py --device cuda --cases ViT-B-32:256,w192:256 \
    --text full --precision fp32,bf16 --steps 10 --warmup 3 --peak-tflops "${PEAK_TFLOPS:-989}"
  timeout 130 "$py" bench/eval_throughput.py --device cuda --images 2000 --precision auto \
    --rounds 2 --threads "${THREADS:-8}" --cb-workers "${THREADS:-8}"
} 2>&1 | tee "$log"
