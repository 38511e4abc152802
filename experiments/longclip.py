"""Long-CLIP on the shapes world: stretch the text positions, fine-tune on long captions.

    PYTHONPATH=. nice -n 5 python experiments/longclip.py --base runs/base --out runs/longclip

1. the base model (a run folder of the quick-start recipe; its text context is the
   ``tiny`` preset's 32 tokens, which cuts every multi-sentence caption);
2. ``clipforge stretch --context 248 --keep 20``: the first 20 positions kept, the rest
   interpolated (``OUT/long.pt``);
3. that model fine-tuned (``--init``) on shapes-world scenes of which a seeded half carry
   their multi-sentence description as the only caption (``--shapes-args
   long_captions=0.5``), the other half their short captions;
4. with ``--control``, the unstretched base fine-tuned on the same stream (its 32-token
   context cuts the long captions): what the extra training alone does.

Each model is scored by ``clipforge.eval.suite.evaluate`` on ``long_captions`` (image <->
multi-sentence caption retrieval on the test scenes) and on short-caption ``zeroshot``
(40 classes). Writes ``OUT/longclip.json`` and ``OUT/longclip.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from clipforge.config import from_dict
from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.suite import evaluate
from clipforge.models import CLIP, load, save_checkpoint
from clipforge.models.stretch import stretch_positions
from clipforge.train import TrainConfig, train

METRICS = ("i2t_R@1", "t2i_R@1", "truncated")


def score(model: CLIP, per_class: int, scenes: int) -> dict[str, float]:
    tok = get_tokenizer(model.cfg.text.context_length)
    r = evaluate(model, tok, "zeroshot,long_captions", per_class=per_class, scenes=scenes)
    long = r["tasks"]["long_captions"]["metrics"]
    return {
        "zeroshot": r["tasks"]["zeroshot"]["metrics"]["top1"],
        **{f"long_{k}": long[k] for k in METRICS},
    }


def base_architecture(base: Path) -> dict[str, Any]:
    import yaml

    saved = yaml.safe_load((base / "config.yaml").read_text())
    return {"model": saved["model"], "model_args": dict(saved.get("model_args") or {})}


def fine_tune(a: argparse.Namespace, arch: dict[str, Any], init: Path, folder: Path) -> float:
    """Fine-tune ``init`` on the mixed long/short caption stream; training seconds."""
    stamp = folder / "wall_seconds.txt"
    if (folder / "checkpoints" / "final.pt").exists() and stamp.exists():
        return float(stamp.read_text())
    cfg = from_dict(TrainConfig, dict(
        **arch, init=str(init), steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        warmup=max(1, a.steps // 6), shapes_args={"long_captions": a.long_share},
        evals="none", eval_every=0, ckpt_every=a.steps, threads=a.threads, progress=False,
        seed=0, out=str(folder),
    ))  # fmt: skip
    t0 = time.perf_counter()
    train(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    stamp.write_text(f"{wall:.1f}\n")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="base run folder (quick-start recipe)")
    ap.add_argument("--out", default="runs/longclip")
    ap.add_argument("--context", type=int, default=248)
    ap.add_argument("--keep", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--long-share", type=float, default=0.5)
    ap.add_argument("--per-class", type=int, default=10, help="zero-shot images per class")
    ap.add_argument("--scenes", type=int, default=300, help="long-caption test scenes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--control", action="store_true", help="also fine-tune the unstretched base")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = Path(a.base)
    base = load(base_path)
    arch = base_architecture(base_path)
    rows: list[dict[str, Any]] = []

    def report(label: str, model: CLIP, seconds: float = 0.0) -> None:
        row = {"model": label, "context": model.cfg.text.context_length,
               **score(model, a.per_class, a.scenes), "seconds": round(seconds, 1)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)

    report("before (base)", base)
    long_path = out / "long.pt"
    stretched = stretch_positions(load(base_path), a.context, a.keep)
    save_checkpoint(stretched, long_path, "clipforge")
    report(f"after stretch (--context {a.context} --keep {a.keep})", stretched)
    long_arch = {**arch, "model_args": {**arch["model_args"], "text.context_length": a.context}}
    wall = fine_tune(a, long_arch, long_path, out / "long_ft")
    report("after fine-tune (stretched)", load(out / "long_ft"), wall)
    if a.control:
        wall = fine_tune(a, arch, base_path, out / "short_ft")
        report("control: fine-tune without stretch", load(out / "short_ft"), wall)

    (out / "longclip.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| model | text context | long-caption i2t R@1 | long-caption t2i R@1 "
        "| captions cut | short-caption zero-shot | train wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['context']} | {100 * r['long_i2t_R@1']:.1f}% | "
            f"{100 * r['long_t2i_R@1']:.1f}% | {100 * r['long_truncated']:.0f}% | "
            f"{100 * r['zeroshot']:.1f}% | {r['seconds']:.0f} |"
        )
    (out / "longclip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
