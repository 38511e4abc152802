"""OOD detection of the shapes world's held-out shapes and colours: MCM against CLIPN's
learned "no" prompts fitted on a few shots of the 40 known classes; the README table.

    PYTHONPATH=. python experiments/clipn_ood.py --model runs/quick --shots 1,16 --seeds 2

In distribution: the 40 (shape, colour) classes, shots drawn from the world's train split,
25 test images per class from its test split. Out of distribution: the held-out shapes
and colours (:func:`clipforge.eval.shapes_data.ood`, 12 images of each of 29 classes).
Prints one markdown row per (options, shots): mean +- spread over seeds of AUROC and
FPR@95 (in %) of each score, and the mean fit time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.adapt import evaluate_ood, fit_shots, make_embedder, prepare, shots_of  # noqa: E402
from clipforge.config import parse_kv  # noqa: E402
from clipforge.eval import shapes_data  # noqa: E402


def _cell(values: list[float]) -> str:
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run folder or checkpoint")
    ap.add_argument("--shots", default="1,16")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--options", action="append", default=[""], metavar="K=V,...",
                    help="clipn options of one row set (repeatable; default: the defaults)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", help="embedding cache folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb = make_embedder(args.model, args.cache)
    size = emb.model.cfg.vision.image_size
    shots = [int(s) for s in args.shots.split(",")]
    prep = prepare(emb, shapes_data.classification(size, split="train", per_class=max(shots)))
    test = shapes_data.classification(size, split="test")
    ood = shapes_data.ood(size)
    print("| clipn options | shots | MCM AUROC | MCM FPR@95 | CLIPN AUROC | CLIPN FPR@95 | fit s |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.options:
        opts = parse_kv(spec, "--options")
        for k in shots:
            rows, secs = [], []
            for seed in range(args.seeds):
                start = time.perf_counter()
                a = fit_shots("clipn", shots_of(prep, k, seed, emb), **opts)
                secs.append(time.perf_counter() - start)
                rows.append(evaluate_ood(a, test, ood))
            cells = [_cell([r[s][m] for r in rows]) for s in ("mcm", "clipn")
                     for m in ("auroc", "fpr95")]  # fmt: skip
            print(f"| {spec or 'defaults'} | {k} | {' | '.join(cells)} | "
                  f"{statistics.mean(secs):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
