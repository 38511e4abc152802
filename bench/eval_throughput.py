"""Image-embedding throughput of clipforge's evaluator against CLIP_benchmark's loop.

In one process, on the same model (default: ``ViT-B-32`` with random weights, 224 px) and
the same folder of PNGs, alternately so that machine load hits all alike, it times:

* CLIP_benchmark's default loop:
  ``clip_benchmark.metrics.zeroshot_classification.run_classification`` over a
  ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with its CLI's defaults (batch 64,
  4 loader workers, ``amp=True``, which on CPU is bfloat16 autocast), and the same loop
  tuned for this machine (``--cb-workers`` loader workers, 0 by default), and tuned
  with ``amp=False`` (its ``--no_amp``: float32, the fair baseline where the CPU has no
  native bf16 and autocast falls back to slow kernels);
* clipforge: :class:`clipforge.eval.embed.Embedder` on
  :func:`clipforge.eval.datasets.image_folder` (no cache, batch 128, ``--precision``,
  ``auto`` by default, as ``clipforge eval`` runs; ``--runtime compile`` for the image
  tower compiled by TorchInductor, each round's time including its compilation, which
  after the first round reads Inductor's kernel cache).

It checks that the features agree, then prints images/s (median of the rounds) and the
ratios clipforge / CLIP_benchmark, in wall time and in CPU time.

    python bench/eval_throughput.py                          # ViT-B-32, 1000 images
    python bench/eval_throughput.py --model RUN_DIR --images 2000 --precision fp32
    python bench/eval_throughput.py --runtime compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipforge.allocator import tune_allocator  # noqa: E402

# As clipforge eval starts; the peer loops in this process share the setting, so the ratios
# compare the loops at equal allocation cost (bench/allocator.py measures the setting).
tune_allocator()

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
) -> torch.Tensor:  # the model's device is CLIP_benchmark's device
    """CLIP_benchmark's zero-shot embedding loop; the identity "classifier" returns the
    normalised features themselves (scaled by its fixed 100)."""
    from clip_benchmark.metrics.zeroshot_classification import run_classification
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), transform=image_transform(model.cfg))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
    device = next(model.parameters()).device
    eye = torch.eye(model.cfg.embed_dim, device=device)
    logits, _ = run_classification(model, eye, loader, device.type, amp=amp)
    return logits.cpu() / 100.0


def ours_features(
    model: CLIP, root: Path, precision: str, runtime: str = "torch"
) -> tuple[torch.Tensor, str]:
    tok = get_tokenizer(model.cfg.text.context_length)
    emb = Embedder(model, tok, progress=False, precision=precision, runtime=runtime)
    return emb.images(image_folder(root).images), emb.precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-B-32", help="preset (random weights) or run folder")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--render-size", type=int, default=256, help="PNG side in pixels")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--runtime", default="torch", choices=["torch", "compile"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cb-workers", type=int, default=0, help="tuned CLIP_benchmark workers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if Path(args.model).is_dir():
        from clipforge.models import load

        model = load(args.model)
    else:
        torch.manual_seed(0)
        model = create_model(args.model).eval()
    model.to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.images, args.render_size)
        chosen = {}

        def ours() -> torch.Tensor:
            feats, chosen["precision"] = ours_features(model, root, args.precision, args.runtime)
            return feats

        loops = {
            "CLIP_benchmark default": lambda: clip_benchmark_features(model, root, 4, True, 64),
            "CLIP_benchmark tuned": lambda: clip_benchmark_features(
                model, root, args.cb_workers, True, 64
            ),
            # Where bf16 does not run natively, amp=True is CLIP_benchmark's slow default
            # and its --no_amp run the fair baseline: the same fp32 arithmetic as ours.
            "CLIP_benchmark no amp": lambda: clip_benchmark_features(
                model, root, args.cb_workers, False, 64
            ),
            "clipforge": ours,
        }
        print(
            f"model {args.model}, {args.images} PNGs at {args.render_size} px, threads "
            f"{args.threads}; CLIP_benchmark batch 64, amp, workers 4 (default) and "
            f"{args.cb_workers} (tuned); clipforge --precision {args.precision} "
            f"--runtime {args.runtime}"
        )
        times: dict[str, list[float]] = {k: [] for k in loops}
        cpu: dict[str, list[float]] = {k: [] for k in loops}
        feats: dict[str, torch.Tensor] = {}
        for r in range(args.rounds):
            order = list(loops.items())
            # Rotate who goes first, so a load change on a shared machine hits all.
            for label, fn in order[r % len(order) :] + order[: r % len(order)]:
                t0, c0 = time.perf_counter(), time.process_time()
                feats[label] = fn()
                times[label].append(time.perf_counter() - t0)
                cpu[label].append(time.process_time() - c0)
                print(f"  round {r}: {label:<24} {times[label][-1]:6.1f} s wall, "
                      f"{cpu[label][-1]:6.1f} s CPU (this process)")  # fmt: skip
    ref = feats["CLIP_benchmark default"]
    for label, f in feats.items():
        cos = torch.nn.functional.cosine_similarity(ref, f.float(), dim=-1)
        print(f"{label:<24} min cosine to CLIP_benchmark's features {float(cos.min()):.5f}")
    print(f"clipforge ran in {chosen['precision']}")
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    for k in rate:
        print(f"{k:<24} {rate[k]:8.1f} images/s")
    for base in ("CLIP_benchmark default", "CLIP_benchmark tuned", "CLIP_benchmark no amp"):
        print(f"ratio clipforge / {base}: {rate['clipforge'] / rate[base]:.2f}x")


if __name__ == "__main__":
    main()
