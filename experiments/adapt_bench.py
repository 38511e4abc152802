"""Few-shot adaptation of a shapes-world model to classes it never saw; the README table.

    PYTHONPATH=. python experiments/adapt_bench.py --model runs/first --out /tmp/adapt

Two tasks, each written as image folders (train/ and test/) and run through
``clipforge adapt bench`` (every registered method, 1/2/4/8/16 shots, 3 seeds):

* ``shapes-novel``: the 29 held-out (shape, colour) classes of the shapes world (hexagon,
  diamond in known colours; pink, brown, grey on known shapes; and both), 32 training
  images per class from the world's train split, 25 test images per class from its test
  split;
* ``digits``: scikit-learn's 8x8 handwritten digits (real pixels, 1,797 images), scaled
  to the model's image size, class names the number words the shapes captions use
  ("zero" .. "nine"); half of each class trains, half tests (seeded).

Prints each report and the wall time of each bench (embedding included).
``--options coop:class_specific=true`` passes options to one method (the README's CoOp
CSC row: ``--methods coop --shots 1,16 --options coop:class_specific=true``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.adapt import make_embedder  # noqa: E402
from clipforge.adapt.bench import bench, resolve_methods, usable_methods, write  # noqa: E402
from clipforge.adapt.shapes_task import write_novel_classes  # noqa: E402
from clipforge.config import parse_kv  # noqa: E402
from clipforge.data.shapes.scenes import NUMBER_WORDS  # noqa: E402
from clipforge.eval.datasets import image_folder  # noqa: E402


def write_digits(root: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's digits as ``root/{train,test}/<n>_<word>/*.png``, split half/half."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        half = len(idx) // 2
        for split, part in (("train", idx[:half]), ("test", idx[half:])):
            folder = root / split / f"{c}_{NUMBER_WORDS[c]}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                # Ink 0..16 scaled to 0..255: white strokes on black.
                px = (d.images[i] * (255 / 16)).astype("uint8")
                img = Image.fromarray(px).resize((size, size), Image.NEAREST).convert("RGB")
                img.save(folder / f"{i:04d}.png")
    for split in ("train", "test"):  # the readable names: the number words
        names = [NUMBER_WORDS[c] for c in range(10)]
        (root / split / "classnames.txt").write_text("\n".join(names) + "\n")
    return root / "train", root / "test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run folder or checkpoint")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--tasks", default="shapes-novel,digits")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--options", action="append", default=[], metavar="METHOD:K=V,...",
        help="options of one method, e.g. coop:class_specific=true (repeatable)",
    )  # fmt: skip
    ap.add_argument("--cache", help="embedding cache (default: OUT/cache)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    emb = make_embedder(args.model, args.cache or out / "cache")
    options = {}
    for spec in args.options:
        method, _, kv = spec.partition(":")
        options[method] = parse_kv(kv, "--options")
    size = emb.model.cfg.vision.image_size
    shots = [int(s) for s in args.shots.split(",")]
    methods = resolve_methods(args.methods)
    for task in args.tasks.split(","):
        data = out / "data" / task
        if not (data / "test").exists():
            if task == "shapes-novel":
                write_novel_classes(data, size, train_per_class=32, test_per_class=25)
            else:
                write_digits(data, size)
        start = time.perf_counter()
        train = image_folder(data / "train")
        run, skipped = usable_methods(args.methods, methods, train)
        res = bench(emb, train, image_folder(data / "test"), run,
                    shots, list(range(args.seeds)), options)  # fmt: skip
        if skipped:
            res["skipped"] = skipped
        res["options"] = options
        res["model"], res["seconds"] = str(args.model), round(time.perf_counter() - start, 1)
        write(res, out / task, f"{task}: {args.model}")
        print((out / task / "report.md").read_text())
        print(f"{task}: {res['seconds']} s for {len(run)} methods x {shots} x {args.seeds} seeds")


if __name__ == "__main__":
    main()
