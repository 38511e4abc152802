"""Token merging at inference (``--merge-tokens r``): images/s, GFLOPs and zero-shot
accuracy for several ``r`` on one trained model.

In one process: a fixed batch of shapes-world images is encoded by the image tower with
each ``r`` in turn, ``--rounds`` times round-robin so that machine load hits all alike;
images/s is the median of the rounds and the ratio is against ``r = 0`` measured in the
same rounds. GFLOPs are counted (:func:`clipforge.models.tome.vision_gflops`, the
transformer blocks), and zero-shot accuracy comes from :func:`clipforge.eval.suite.evaluate`.

    python bench/token_merging.py RUN_DIR --r 0,4,8,12,16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.eval.suite import evaluate, flat_metrics  # noqa: E402
from clipforge.models import load  # noqa: E402
from clipforge.models.preprocess import image_transform  # noqa: E402
from clipforge.models.tome import set_merging, token_schedule, vision_gflops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--r", default="0,4,8,12,16", help="comma-separated merges per block")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rs = [int(x) for x in a.r.split(",")]
    if rs[0] != 0:
        rs = [0, *rs]
    model = load(a.model).eval()
    cfg = model.cfg.vision
    world = ShapesWorld(cfg.image_size, split="test", seed=0)
    transform = image_transform(model.cfg)
    images = torch.stack([transform(world.sample(i).image) for i in range(a.batch)])
    times: dict[int, list[float]] = {r: [] for r in rs}
    with torch.no_grad():
        for r in rs:  # warm-up
            set_merging(model, r)
            model.encode_image(images[:16])
        for _ in range(a.rounds):
            for r in rs:
                set_merging(model, r)
                t = time.perf_counter()
                model.encode_image(images)
                times[r].append(time.perf_counter() - t)
    n = (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.class_token)
    base = a.batch / statistics.median(times[0])
    print(f"{a.model}: {n} tokens, {cfg.layers} blocks, batch {a.batch}, {a.rounds} rounds")
    print(
        "| r | tokens after each block | images/s | ratio vs r=0 | GFLOPs/image | zero-shot top-1 |"
    )
    print("|---|---|---|---|---|---|")
    for r in rs:
        set_merging(model, r)
        acc = flat_metrics(
            evaluate(
                model,
                get_tokenizer(model.cfg.text.context_length),
                ["zeroshot"],
                per_class=a.per_class,
            )  # fmt: skip
        )
        top1 = next(v for k, v in acc.items() if k.endswith("top1"))
        speed = a.batch / statistics.median(times[r])
        counts = token_schedule(n, cfg.layers, r, int(cfg.class_token))
        print(f"| {r} | {', '.join(map(str, counts))} | {speed:.0f} | {speed / base:.2f} | "
              f"{vision_gflops(cfg, r):.4f} | {100 * top1:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
