"""Data pipeline throughput from tar shards on disk, against the tiny training step rate.

Writes shapes-world samples as JPEG webdataset shards into a temporary folder, then
reads them back through the training pipeline (shard stream with shuffle buffer ->
JPEG decode -> random resized crop -> tokenize -> batch) in the training process and
with 2 data workers, and times full training steps of the tiny preset (batch 128) on
the same shards. The pipeline keeps up when its samples/s exceed the step rate:

    python bench/data_throughput.py --samples 4000 --batches 20 --train-steps 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from clipforge.data.batches import Collator, SampleProcessor
from clipforge.data.loader import iter_batches  # noqa: E402
from clipforge.data.readers import ShardDataset  # noqa: E402
from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.stream import ShardStream
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.data.transforms import SeededCrop  # noqa: E402
from clipforge.data.writers import write_shards  # noqa: E402
from clipforge.losses import clip_loss  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402


def pipeline(shards: list[str], model, batch: int, workers: int):
    cfg = model.cfg
    return iter_batches(
        ShardStream(ShardDataset(shards), seed=0, buffer=1000),
        SampleProcessor(SeededCrop(cfg.vision.image_size), seed=0),
        Collator(get_tokenizer(cfg.text.context_length), cfg.mean, cfg.std),
        batch,
        workers=workers,
    )


def data_rate(
    shards: list[str], model, batch: int, batches: int, workers: int
) -> tuple[float, float]:
    """Samples/s of wall time, and samples per CPU second of this (the main) process.

    On a busy machine the wall rate says how much CPU the process got; the CPU rate of
    the in-process pipeline is what one worker does with a whole core.
    """
    it = pipeline(shards, model, batch, workers)
    next(it)  # warm-up: worker start, shuffle buffer fill, tokenizer cache
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    n = batches * batch
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def train_rate(shards: list[str], model, batch: int, steps: int) -> float:
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.98), 1e-6)
    it = pipeline(shards, model, batch, workers=0)

    def step() -> None:
        b = next(it)
        out = model(b.images, b.tokens)
        loss = clip_loss(out.image, out.text, out.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=4000, help="samples written to shards")
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--image-size", type=int, default=64, help="stored JPEG side (pixels)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=20, help="timed batches per data setting")
    p.add_argument("--train-steps", type=int, default=5, help="timed tiny training steps (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training step")
    args = p.parse_args()

    torch.set_num_threads(1)  # decode and crop are single-threaded per worker
    torch.manual_seed(0)
    model = create_model("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        world = ShapesWorld(args.image_size, split="train", seed=0)
        paths = write_shards(
            (world.sample(i) for i in range(args.samples)), tmp, shard_size=args.shard_size
        )
        shards = [str(s) for s in paths]
        size = sum(os.path.getsize(s) for s in shards) / 2**20
        print(
            f"{args.samples} samples, {len(shards)} shards, {size:.1f} MiB (JPEG {args.image_size}px)"
        )
        one, one_cpu = data_rate(shards, model, args.batch, args.batches, workers=0)
        print(
            f"data, in the training process : {one:8.1f} samples/s  (per worker; "
            f"{one_cpu:.0f} per CPU second)"
        )
        two, main_cpu = data_rate(shards, model, args.batch, args.batches, workers=2)
        print(
            f"data, 2 worker processes      : {two:8.1f} samples/s  ({two / one:.2f}x; main "
            f"process {1e3 / main_cpu:.2f} CPU ms per sample)"
        )
        if args.train_steps:
            torch.set_num_threads(args.threads)
            step = train_rate(shards, model, args.batch, args.train_steps)
            print(
                f"tiny training step ({args.threads} threads): {step:8.1f} samples/s; one "
                f"data worker is {one / step:.1f}x faster than training consumes"
            )


if __name__ == "__main__":
    main()
