"""CUDA paths: bf16 autocast training, SDPA's flash kernel, NCCL, pinned transfers.

These run only where CUDA is (``bench/gpu_check.sh`` runs them on a GPU machine); on a
CPU-only machine there is nothing they could exercise, so they are skipped there.
"""

import os
import subprocess
import sys

import pytest
import torch

from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.datasets import ImageSet
from clipforge.eval.embed import Embedder
from clipforge.models import create_model
from clipforge.models.transformer import Attention
from clipforge.train import TrainConfig, train
from tests.conftest import MICRO_ARGS, MICRO_ARGS_CLI

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_lone_process_trains_on_the_gpu_in_bf16(tmp_path):
    cfg = TrainConfig(
        model_args=dict(MICRO_ARGS), batch_size=16, steps=4, warmup=1, log_every=1,
        ckpt_every=2, eval_every=0, eval_per_class=1, eval_pairs=20, precision="bf16",
        progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(cfg)
    assert run.step == 4 and run.metrics["zeroshot/top1"] >= 0


def test_flash_attention_matches_the_math_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attn = Attention(256, 4).cuda()
    x = torch.randn(8, 50, 256, device="cuda")
    with sdpa_kernel(SDPBackend.MATH):
        want = attn(x)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
        got = attn(x).float()
    # bf16 inputs round to 2^-9 relative; a softmax-weighted mean of 50 values of size ~1
    # and two 256-wide projections keep the error to a few times 2^-9 * |y|.
    scale = want.abs().max()
    assert float((got - want).abs().max()) < 16 * 2**-9 * float(scale)


def test_bf16_evaluation_on_the_gpu_records_parity():
    from PIL import Image

    model = create_model("tiny", dict(MICRO_ARGS)).cuda()
    size = model.cfg.vision.image_size
    img = Image.new("RGB", (size, size), (200, 30, 30))
    emb = Embedder(model, get_tokenizer(model.cfg.text.context_length), progress=False,
                   precision="auto")  # fmt: skip
    emb.images(ImageSet("red", 10, lambda i: img))
    assert emb.precision == "bf16"
    assert emb.precision_record["image_parity"]["min_cosine"] > 0.999


def test_nccl_run_under_torchrun(tmp_path):
    n = min(torch.cuda.device_count(), 2)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
        "-m", "clipforge.train", "--model-args", MICRO_ARGS_CLI, "--batch-size", "8",
        "--steps", "2", "--warmup", "1", "--log-every", "1", "--eval-every", "0",
        "--eval-per-class", "1", "--eval-pairs", "20", "--dist-backend", "nccl",
        "--progress", "false", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
