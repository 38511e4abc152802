"""Train the tiny model once per objective at one budget; tabulate what each one buys.

    python experiments/objectives.py --out runs/objectives --steps 150

Every objective trains the ``tiny`` preset from the same seed on the same shapes-world
stream for ``--steps`` steps of ``--batch-size``, then the evaluation suite measures, on
held-out scenes: zero-shot top-1 (40 colour x shape classes), image->text R@1,
compositional accuracy per perturbation (attribute, relation, count and shape swaps of
the true caption), counting (number words 2..10) and the modality gap (distance between
the image and text centroids). Writes ``OUT/objectives.json`` and ``OUT/objectives.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from clipforge.config import from_dict
from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.suite import run_suite
from clipforge.models import load
from clipforge.train import TrainConfig, train

# (label, TrainConfig overrides). Objectives that need something the shapes world does
# not carry (cwcl: a reference model; symile: a third modality) are covered elsewhere.
OBJECTIVES: list[tuple[str, dict]] = [
    ("clip", {"loss": "clip"}),
    ("siglip", {"loss": "siglip"}),
    ("infoloob", {"loss": "infoloob"}),
    ("clip + hard negatives", {"loss": "clip", "hard_negatives": "attribute,relation,count,shape"}),
    ("mixup", {"loss": "mixup"}),
    ("clip+0.1*uniformity+0.1*alignment", {"loss": "clip+0.1*uniformity+0.1*alignment"}),
    ("distill (EMA teacher)", {"loss": "distill", "teacher": "ema"}),
]
TASKS = "zeroshot,retrieval,compositional,counting,modality_gap"
COLUMNS = [
    ("zero-shot", "zeroshot", "top1"),
    ("i2t R@1", "retrieval", "i2t_R@1"),
    ("attribute", "compositional", "attribute/accuracy"),
    ("relation", "compositional", "relation/accuracy"),
    ("count swap", "compositional", "count/accuracy"),
    ("shape swap", "compositional", "shape/accuracy"),
    ("counting", "counting", "accuracy"),
    ("gap", "modality_gap", "centroid_distance"),
]


def _metric(results: dict, task: str, key: str) -> float | None:
    return results["tasks"].get(task, {}).get("metrics", {}).get(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/objectives")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of labels to run (default: all)")
    a = ap.parse_args()
    out = Path(a.out)
    rows = []
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    for label, over in OBJECTIVES:
        if only and label not in only:
            continue
        folder = out / label.replace(" ", "_").replace("*", "x").replace("+", "_")
        t0 = time.perf_counter()
        if not (folder / "checkpoints" / "final.pt").exists():
            cfg = from_dict(TrainConfig, dict(
                steps=a.steps, batch_size=a.batch_size, warmup=min(50, a.steps // 5),
                eval_every=0, ckpt_every=a.steps, eval_per_class=5, eval_pairs=200,
                threads=a.threads, progress=False, out=str(folder), **over,
            ))  # fmt: skip
            train(cfg)
        model = load(folder)
        res = run_suite(
            model, get_tokenizer(model.cfg.text.context_length), folder / "eval",
            tasks=TASKS, progress=False,
        )  # fmt: skip
        row = {"objective": label, "seconds": round(time.perf_counter() - t0)}
        for name, task, key in COLUMNS:
            row[name] = _metric(res, task, key)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "objectives.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = "| objective | " + " | ".join(n for n, _, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = []
        for n, _, _ in COLUMNS:
            v = r[n]
            cells.append("-" if v is None else (f"{v:.3f}" if n == "gap" else f"{100 * v:.1f}%"))
        lines.append(f"| {r['objective']} | " + " | ".join(cells) + " |")
    (out / "objectives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
