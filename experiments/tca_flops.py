"""Accuracy against vision-tower GFLOPs of TCA's token condensation; the README table.

    PYTHONPATH=. python experiments/tca_flops.py --model runs/quick --keep 1,0.9,0.7,0.5,0.3

Zero-shot top-1 of the condensed tower (``clipforge adapt`` method ``tca``) on two test
sets: the shapes world's 40 known classes (25 test images each) and the 29 novel classes
of ``shapes-novel`` (25 test images each, :mod:`clipforge.adapt.shapes_task`). GFLOPs are
the analytic count of :func:`clipforge.adapt.tca.tower_flops` per image (the blocks only).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.adapt import fit_shots, make_embedder, prepare, shots_of  # noqa: E402
from clipforge.adapt.harness import scores  # noqa: E402
from clipforge.adapt.shapes_task import write_novel_classes  # noqa: E402
from clipforge.adapt.tca import condensed_counts  # noqa: E402
from clipforge.eval import shapes_data  # noqa: E402
from clipforge.eval.datasets import image_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run folder or checkpoint")
    ap.add_argument("--keep", default="1,0.9,0.7,0.5,0.3")
    ap.add_argument("--start", type=int, default=1, help="first condensing block (0-based)")
    ap.add_argument("--merge", default="true,false")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb = make_embedder(args.model)
    size = emb.model.cfg.vision.image_size
    with tempfile.TemporaryDirectory() as tmp:
        novel_train, novel_test = write_novel_classes(Path(tmp), size, 1, 25)
        sets = {
            "known 40": (shapes_data.classification(size, split="train", per_class=1),
                         shapes_data.classification(size, split="test")),
            "novel 29": (image_folder(novel_train), image_folder(novel_test)),
        }  # fmt: skip
        print("| merge | keep | tokens per block | GFLOPs | known 40 top-1 | novel 29 top-1 |")
        print("|---|---|---|---|---|---|")
        for merge in [m == "true" for m in args.merge.split(",")]:
            for keep in [float(k) for k in args.keep.split(",")]:
                if keep == 1 and not merge:
                    continue  # the same as keep 1 with merge
                cells, a = [], None
                for train, test in sets.values():
                    shots = shots_of(prepare(emb, train), 1, 0, emb)
                    a = fit_shots("tca", shots, keep=keep, start=args.start, merge=merge)
                    cells.append(f"{100 * scores(a.logits(test.images), test.labels)['top1']:.1f}")
                v = emb.model.cfg.vision
                grid = v.image_size // v.patch_size
                counts = condensed_counts(grid * grid, v.layers, keep, args.start, merge)
                print(f"| {merge} | {keep} | {'/'.join(map(str, counts))} | "
                      f"{a.params['gflops']:.4f} | {' | '.join(cells)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
