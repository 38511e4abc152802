#!/usr/bin/env bash
# One prepared check for a CUDA machine: the CUDA tests, then ViT-B-32 training and
# inference throughput and model FLOP utilisation against OpenCLIP in the same process.
#   bash bench/gpu_check.sh            # writes its log to ${OUT:-.}/gpu_check.log
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'bf16', torch.cuda.is_bf16_supported(), 'flash', torch.backends.cuda.flash_sdp_enabled())"
  python -m pytest -q tests/cuda -p no:cacheprovider
  # Peak bf16 dense tensor TFLOP/s of the card for MFU; H100/H200 SXM: 989.
  python bench/peer_throughput.py --device cuda --cases ViT-B-32:256 --text full \
    --precision fp32,bf16 --steps 10 --warmup 3 --peak-tflops "${PEAK_TFLOPS:-989}"
  python bench/eval_throughput.py --images 2000 --precision auto --rounds 2
} 2>&1 | tee "$log"
