"""``clipforge embed`` throughput against OpenCLIP's own fp32 loop and CLIP_benchmark's loop.

In one process, on ``ViT-B-32`` with random weights (224 px) and one folder of ``--n``
shapes-world JPEGs, alternately so that machine load hits all alike, it times:

* clipforge: :func:`clipforge.index.embedding.embed_collection` into a scratch folder
  (decode, preprocess, encode, write float16 shards), ``--precision`` (``auto``: bf16
  where the CPU runs it natively, else fp32), batch 128, in this process;
* OpenCLIP's own fp32 loop: ``open_clip.create_model_and_transforms("ViT-B-32")`` and a
  ``DataLoader`` (batch 32, ``--workers`` decode processes) into ``encode_image``;
* CLIP_benchmark's default loop (batch 64, 4 loader workers, ``amp=True``: bf16 autocast
  on CPU), as ``bench/eval_throughput.py`` runs it.

Prints images/s (median of the rounds) and the ratios. ``--workers`` for the OpenCLIP loop
shows whether decode worker processes pay on this machine.

First it times the stages of clipforge's path apart, on the same images: decode (one
core: Pillow), preprocessing (resize, crop, normalise; torch on ``--threads``) and the
fp32 image encoder, and prints the share of the time decode and preprocessing would take
behind an encoder 5x faster (what bf16 on AMX gives): whether worker processes are needed
to feed it. ``--stages-only`` stops there (no OpenCLIP or CLIP_benchmark needed).

    python bench/embed_throughput.py               # 2000 JPEGs
    python bench/embed_throughput.py --n 300 --rounds 1
    python bench/embed_throughput.py --n 256 --rounds 3 --stages-only
    python bench/embed_throughput.py --runtime compile --n 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipforge.allocator import tune_allocator  # noqa: E402

# As clipforge embed starts; the peer loops in this process share the setting, so the ratios
# compare the loops at equal allocation cost (bench/allocator.py measures the setting).
tune_allocator()

import torch  # noqa: E402

from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.eval.embed import Embedder  # noqa: E402
from clipforge.index.embedding import embed_collection  # noqa: E402
from clipforge.index.items import open_collection  # noqa: E402
from clipforge.models import create_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from eval_throughput import clip_benchmark_features  # noqa: E402


def write_jpegs(root: Path, n: int, size: int) -> None:
    """``n`` shapes-world scenes as JPEG, one folder per scene kind (for ImageFolder)."""
    world = ShapesWorld(size, split="test")
    for i in range(n):
        s = world.sample(i)
        d = root / s.meta["kind"]
        d.mkdir(parents=True, exist_ok=True)
        s.image.save(d / f"{i:06d}.jpg", quality=90)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform: object) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.open(self.paths[i]).convert("RGB"))  # type: ignore[operator]


def open_clip_loop(
    model: object, preprocess: object, root: Path, workers: int, batch: int = 32
) -> int:
    paths = sorted(root.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(
        _Files(paths, preprocess), batch_size=batch, num_workers=workers
    )
    n = 0
    with torch.no_grad():
        for x in loader:
            n += len(model.encode_image(x))  # type: ignore[attr-defined]
    return n


def stages(model: object, tok: object, items: object, rounds: int, batch: int = 128) -> None:
    """Seconds per image of decode, preprocessing and the fp32 encoder, apart (medians of
    ``rounds``), and decode + preprocessing's share behind a 5x faster encoder."""
    emb = Embedder(model, tok, progress=False, precision="fp32")
    n = len(items)
    t: dict[str, list[float]] = {"decode": [], "preprocess": [], "encode fp32": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        images = [items.image(i) for i in range(n)]
        t1 = time.perf_counter()
        x = torch.stack([emb.transform(im) for im in images])
        t2 = time.perf_counter()
        with torch.inference_mode():
            for b in range(0, n, batch):
                model.encode_image(x[b : b + batch])
        t3 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            t[k].append(dt / n)
    per = {k: statistics.median(v) for k, v in t.items()}
    for k, v in per.items():
        print(f"  stage {k:<12} {v * 1e3:8.2f} ms/image  {1 / v:8.1f} images/s")
    feed = per["decode"] + per["preprocess"]
    for speedup in (1, 5):
        enc = per["encode fp32"] / speedup
        print(f"  encoder {speedup}x: decode + preprocess are {feed / (feed + enc):.0%} of the "
              f"in-process time ({1 / (feed + enc):.1f} images/s; the encoder alone "
              f"{1 / enc:.1f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--render-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--workers", type=int, default=2, help="OpenCLIP loop decode workers (also run with 0)"
    )
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument(
        "--runtime", default="torch", choices=["torch", "compile"],
        help="clipforge's runtime; compile's clock includes compiling the image tower",
    )  # fmt: skip
    ap.add_argument("--stages-only", action="store_true", help="time the stages apart only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("ViT-B-32").eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        write_jpegs(root, args.n, args.render_size)
        items = open_collection(str(root))
        print(f"stages, {args.n} JPEGs at {args.render_size} px, {args.threads} threads:")
        stages(model, tok, items, args.rounds)
        if args.stages_only:
            return
        runs = iter(range(10**6))

        def ours() -> None:
            info = embed_collection(
                model, tok, items, Path(tmp) / f"emb{next(runs)}", model_source="bench",
                precision=args.precision, progress=False, runtime=args.runtime,
            )  # fmt: skip
            print(f"    clipforge ran in {info['precision']['precision']}, {args.runtime}")

        import open_clip

        oc, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")  # outside the clock
        oc.eval()
        loops = {
            "clipforge embed": ours,
            "OpenCLIP fp32 (0 workers)": lambda: open_clip_loop(oc, preprocess, root, 0),
            f"OpenCLIP fp32 ({args.workers} workers)": lambda: open_clip_loop(
                oc, preprocess, root, args.workers
            ),
            "CLIP_benchmark default": lambda: clip_benchmark_features(model, root, 4, True, 64),
        }
        print(f"ViT-B-32 random weights, {args.n} JPEGs at {args.render_size} px, "
              f"{args.threads} threads")  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in loops}
        for r in range(args.rounds):
            order = list(loops.items())
            for label, fn in order[r % len(order) :] + order[: r % len(order)]:
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
                print(f"  round {r}: {label:<28} {times[label][-1]:7.1f} s")
    rate = {k: args.n / statistics.median(v) for k, v in times.items()}
    for k, v in rate.items():
        print(f"{k:<28} {v:8.1f} images/s")
    ours_rate = rate["clipforge embed"]
    for k in list(rate)[1:]:
        print(f"ratio clipforge / {k}: {ours_rate / rate[k]:.2f}x")


if __name__ == "__main__":
    main()
