"""Compositional binding: which pooling and objective make the default model bind?

    PYTHONPATH=. python experiments/compositional.py --out runs/compositional \
        [--steps 350] [--seed 0] [--variants default,cls,map,map+hardneg]

Trains the ``tiny`` preset on the shapes world once per variant, with the default run's
recipe (``clipforge train``: 350 steps, batch 128) and only the pooling, the hard
negatives or the objective changed, then evaluates on held-out test scenes: zero-shot
top-1 (colour x shape classes) and the ``compositional`` task (true caption against its
attribute-, relation-, shape- and count-swapped versions; chance 50%).

Variants (``--variants all`` runs every one, in this order):

``default``     ``clipforge train`` as it is: mean pooling, ``--loss clip``
``cls``, ``map``, ``grid``  the same with ``vision.pool`` = class token, attention pool
                (MAP), mean + grid cells
``X+hardneg``   variant X with ``--hard-negatives attribute,relation`` (extra negative
                columns of every image's softmax, NegCLIP style)
``X+textneg``   variant X with ``--loss clip+textneg`` and the same hard negatives, which
                the ``textneg`` term also contrasts with their own image under a margin
``filip``       ``--loss clip+filip`` (token-level late interaction beside the pooled loss)

A run of another ``--steps`` keeps the default schedule's shape (warm-up 50/350 of the
steps). The held-out evaluation runs once, at the end (``--eval-every 0``), so a variant's wall
time is its training plus one evaluation. Each finished variant is appended to
``OUT/compositional.json`` and the markdown table ``OUT/compositional.md`` is rewritten,
so a long queue can be read (and stopped) at any point, and queues run side by side
(each with ``--threads 1``) can share one ``--out``; a variant whose run folder
already holds ``checkpoints/final.pt`` is read back instead of retrained.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from clipforge.config import from_dict
from clipforge.train import TrainConfig, train

HARD_NEGATIVES = "attribute,relation"
POOLS = {"default": "mean", "cls": "cls", "map": "map", "grid": "grid"}
# The compositional task's groups, in table order.
KINDS = ("attribute", "relation", "shape", "count")


def variant_config(name: str) -> dict[str, Any]:
    """TrainConfig overrides of variant ``name`` (``POOL``, ``POOL+hardneg``,
    ``POOL+textneg`` or ``filip``)."""
    if name == "filip":
        return {"loss": "clip+filip"}
    pool, _, extra = name.partition("+")
    if pool not in POOLS or extra not in ("", "hardneg", "textneg"):
        raise SystemExit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    over: dict[str, Any] = {}
    if pool != "default":
        over["model_args"] = {"vision.pool": POOLS[pool]}
    if extra:
        over["hard_negatives"] = HARD_NEGATIVES
    if extra == "textneg":
        over["loss"] = "clip+textneg"
    return over


VARIANTS: tuple[str, ...] = (
    "default", "cls", "map", "map+hardneg", "map+textneg", "cls+textneg", "cls+hardneg",
    "default+hardneg", "default+textneg", "filip", "grid", "grid+hardneg",
)  # fmt: skip


def warmup(steps: int) -> int:
    """The default run's warm-up (50 of 350 steps), scaled to a shorter or longer run so
    the schedule keeps its shape."""
    return max(1, round(50 * steps / 350))


def _final(folder: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("final"))


def row_of(name: str, final: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """One table row: the metrics the table shows, fractions in [0, 1]."""
    row: dict[str, Any] = {
        "variant": name,
        "zeroshot": final["zeroshot/top1"],
        "i2t_R@1": final.get("retrieval/i2t_R@1"),
    }
    for kind in KINDS:
        row[f"{kind}_swap"] = final.get(f"compositional/{kind}/accuracy")
    row["seconds"] = None if seconds is None else round(seconds)
    return row


def markdown(results: list[dict[str, Any]], steps: int, seed: int) -> str:
    head = (
        f"| variant ({steps} steps, seed {seed}) | zero-shot | i2t R@1 | attribute swap "
        "| relation swap | shape swap | count swap | wall time |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for r in results:
        cells = [pct(r["zeroshot"]), pct(r["i2t_R@1"])]
        cells += [pct(r[f"{k}_swap"]) for k in KINDS]
        wall = "-" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min"
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/compositional")
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS[:6]),
                    help="comma list of variants, or 'all' (default: the first six)")  # fmt: skip
    a = ap.parse_args()
    names = list(VARIANTS) if a.variants == "all" else [v.strip() for v in a.variants.split(",")]
    overrides = {n: variant_config(n) for n in names}  # every name checked before training
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "compositional.json"
    for name in names:
        folder = out / f"{name.replace('+', '_')}_s{a.seed}_n{a.steps}"
        seconds: float | None = None
        if not (folder / "checkpoints" / "final.pt").exists():
            t0 = time.perf_counter()
            cfg = from_dict(TrainConfig, dict(
                steps=a.steps, seed=a.seed, threads=a.threads, eval_every=0,
                warmup=warmup(a.steps),
                evals="zeroshot,retrieval,compositional", ckpt_every=a.steps, progress=False,
                out=str(folder), **overrides[name],
            ))  # fmt: skip
            train(cfg)
            seconds = time.perf_counter() - t0
        row = row_of(name, _final(folder), seconds)
        row.update(steps=a.steps, seed=a.seed)
        # Read just before writing: another queue may share the folder and have added rows.
        results: list[dict[str, Any]] = json.loads(table.read_text()) if table.is_file() else []
        # A re-read variant keeps the wall time its training run recorded.
        old = [
            r for r in results if (r["variant"], r["steps"], r["seed"]) == (name, a.steps, a.seed)
        ]
        if seconds is None and old:
            row["seconds"] = old[0]["seconds"]
        results = [r for r in results if r not in old] + [row]
        part = table.with_suffix(".json.part")
        part.write_text(json.dumps(results, indent=2) + "\n")
        part.replace(table)
        mine = [r for r in results if (r["steps"], r["seed"]) == (a.steps, a.seed)]
        (out / "compositional.md").write_text(markdown(mine, a.steps, a.seed))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
