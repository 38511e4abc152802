"""Training throughput of the default config (tiny preset, shapes world, batch 128).

Prints samples/s of full training steps (data + forward + backward + AdamW) for a few
thread/precision settings, as ratios against the default run in the same process:

    python bench/train_throughput.py --steps 10
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from clipforge.data.batches import Collator, SampleProcessor
from clipforge.data.loader import iter_batches  # noqa: E402
from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.sources import ShapesSource
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.data.transforms import SeededCrop  # noqa: E402
from clipforge.losses import clip_loss  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402


def measure(
    steps: int,
    batch: int,
    threads: int,
    precision: str,
    data_only: bool = False,
    workers: int = 0,
    warmup: int = 5,
) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("tiny")
    cfg = model.cfg
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.98), 1e-6)
    batches = iter_batches(
        ShapesSource(ShapesWorld(cfg.vision.image_size)),
        SampleProcessor(SeededCrop(cfg.vision.image_size), seed=0),
        Collator(get_tokenizer(cfg.text.context_length), cfg.mean, cfg.std),
        batch,
        workers=workers,
    )
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        b = next(batches)
        if data_only:
            return
        with amp:
            out = model(b.images, b.tokens)
            loss = clip_loss(out.image.float(), out.text.float(), out.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Warm-up: allocator, kernels, tokenizer cache. bf16 kernels are built per shape and the
    # text tower's shape follows each batch's longest caption, so one step is not enough.
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    base = measure(args.steps, args.batch, threads=2, precision="fp32")
    print(f"default (2 threads, fp32): {base:8.1f} samples/s  ratio 1.00")
    for name, kw in (
        ("1 thread, fp32", dict(threads=1, precision="fp32")),
        ("2 threads, 1 data worker", dict(threads=2, precision="fp32", workers=1)),
        ("1 thread, 1 data worker", dict(threads=1, precision="fp32", workers=1)),
        ("2 threads, bf16", dict(threads=2, precision="bf16")),
        ("data pipeline only", dict(threads=2, precision="fp32", data_only=True)),
    ):
        v = measure(args.steps, args.batch, **kw)
        print(f"{name:<26}{v:8.1f} samples/s  ratio {v / base:.2f}")


if __name__ == "__main__":
    main()
