"""Image-embedding throughput of clipforge's evaluator against CLIP_benchmark's loop.

In one process, on the same model and the same image folder, alternately (so both see the
same machine load), it times:

* CLIP_benchmark: ``clip_benchmark.metrics.zeroshot_classification.run_classification``
  over a ``torchvision.datasets.ImageFolder`` + ``DataLoader`` (its CLI's default batch
  size 64, ``--cb-batch`` to change it, and ``--workers`` loader processes), with the
  model's own preprocessing;
* clipforge: :class:`clipforge.eval.embed.Embedder` on
  :func:`clipforge.eval.datasets.image_folder` (no cache; batch 128), same preprocessing.

On CPU the image encoder dominates both loops (PNG decoding and resizing are about a
fifth of the time), so the loops themselves run at about the same speed; batch size
matters little once the OpenMP threads wait passively (64-128 best, 256 slower). Run it
with more threads or on an accelerator, where decoding overlaps the encoder, to see a
difference.

It checks that both produce the same features, then prints images/s (median of the
rounds) and the ratio clipforge / CLIP_benchmark. CLIP_benchmark's default ``amp=True``
means bfloat16 autocast, which on most CPUs is many times slower than float32; the
comparison runs it in float32 (``--amp`` to use its default) so that the numbers compare
the loops, not the precision.

The default data are shapes-world renders written as PNG at ``--render-size`` pixels,
larger than the model's input, as real evaluation photos are.

    python bench/eval_throughput.py                       # run folder runs/default if present
    python bench/eval_throughput.py --model RUN_DIR --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.eval.datasets import image_folder  # noqa: E402
from clipforge.eval.embed import Embedder  # noqa: E402
from clipforge.models import CLIP, create_model, image_transform  # noqa: E402


def write_folder(root: Path, n: int, size: int) -> None:
    """``n`` shapes-world scenes as PNG, one folder per scene kind."""
    world = ShapesWorld(size, split="test")
    for i in range(n):
        s = world.sample(i)
        d = root / s.meta["kind"]
        d.mkdir(parents=True, exist_ok=True)
        s.image.save(d / f"{i:06d}.png")


def clip_benchmark_features(
    model: CLIP, root: Path, workers: int, amp: bool, batch: int = 64
) -> torch.Tensor:
    """CLIP_benchmark's zero-shot embedding loop; the identity "classifier" returns the
    normalised features themselves (scaled by its fixed 100)."""
    from clip_benchmark.metrics.zeroshot_classification import run_classification
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), transform=image_transform(model.cfg))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
    eye = torch.eye(model.cfg.embed_dim)
    logits, _ = run_classification(model, eye, loader, "cpu", amp=amp)
    return logits / 100.0


def ours_features(model: CLIP, root: Path) -> torch.Tensor:
    emb = Embedder(model, get_tokenizer(model.cfg.text.context_length), progress=False)
    return emb.images(image_folder(root).images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/default", help="run folder (default: a random tiny)")
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--render-size", type=int, default=128, help="PNG side in pixels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="CLIP_benchmark DataLoader workers")
    ap.add_argument("--amp", action="store_true", help="CLIP_benchmark's default bf16 autocast")
    ap.add_argument("--cb-batch", type=int, default=64, help="CLIP_benchmark batch (CLI: 64)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if Path(args.model).is_dir():
        from clipforge.models import load

        model, name = load(args.model), args.model
    else:
        model, name = create_model("tiny").eval(), "random tiny"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.images, args.render_size)

        def theirs() -> torch.Tensor:
            return clip_benchmark_features(model, root, args.workers, args.amp, args.cb_batch)

        def ours() -> torch.Tensor:
            return ours_features(model, root)

        a, b = theirs(), ours()
        diff = float((a - b).abs().max())
        print(
            f"model {name}, {args.images} PNGs at {args.render_size} px, threads {args.threads}, "
            f"CLIP_benchmark batch {args.cb_batch}, workers {args.workers}, amp {args.amp}"
        )
        print(f"same features: max |difference| {diff:.2e}")
        times: dict[str, list[float]] = {"CLIP_benchmark": [], "clipforge": []}
        cpu: dict[str, list[float]] = {"CLIP_benchmark": [], "clipforge": []}
        for r in range(args.rounds):
            order = [("CLIP_benchmark", theirs), ("clipforge", ours)]
            # Alternate who goes first, so a load change on a shared machine hits both.
            for label, fn in order if r % 2 == 0 else order[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[label].append(time.perf_counter() - t0)
                cpu[label].append(time.process_time() - c0)
                print(
                    f"  round {r}: {label:<15} {times[label][-1]:6.2f} s wall, {cpu[label][-1]:6.2f} s CPU"
                )
    # CPU seconds are the steadier measure on a shared machine: waiting for a core is not
    # counted.
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    rate_cpu = {k: args.images / statistics.median(v) for k, v in cpu.items()}
    for k in rate:
        print(f"{k:<15} {rate[k]:8.1f} images/s wall, {rate_cpu[k]:8.1f} images per CPU-second")
    print(
        f"ratio clipforge / CLIP_benchmark: {rate['clipforge'] / rate['CLIP_benchmark']:.2f}x "
        f"wall, {rate_cpu['clipforge'] / rate_cpu['CLIP_benchmark']:.2f}x CPU"
    )


if __name__ == "__main__":
    main()
