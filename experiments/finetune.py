"""Fine-tuning a shapes-world model on a shifted domain: which method, at what cost?

    PYTHONPATH=. nice -n 5 python experiments/finetune.py --base runs/base --out runs/finetune

The base model (``--base``: a run folder or checkpoint; without it, the quick-start
recipe is trained first for ``--base-steps``) knows the eight training colours. The
shifted domain draws every object in the three colours it never saw, ``pink``, ``brown``
and ``grey`` (``--shapes-args colours=[pink,brown,grey]``): new pixels, and new words in
the captions. Each method fine-tunes the base on that domain with the same steps, batch,
seed and sample stream:

* full fine-tune, with an EMA of its weights (``--ema-decay``, ``checkpoints/ema.pt``,
  scored apart); lock-image (LiT: only the text tower and the heads train); LoRA rank 8
  (attention and MLP of both towers; the customary higher learning rate); patch dropout
  0.5;
* WiSE-FT: ``(1 - alpha) base + alpha full``, for a curve of alphas;
* with ``--equal-wall``, patch dropout 0.5 again with as many steps as fit in the full
  fine-tune's training wall time at its measured speed (accuracy at equal wall-clock).

Each model is scored by ``clipforge.eval.suite.evaluate``: in-domain zero-shot top-1 over
the 15 new classes (5 shapes x 3 held-out colours, single objects of the test split,
written once as an image folder) and zero-shot top-1 on the base domain's 40 classes
(forgetting). Writes ``OUT/finetune.json``, ``OUT/finetune.md`` and
``OUT/wise_curve.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from clipforge.config import from_dict
from clipforge.data.shapes import SHAPES, ShapesWorld
from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.suite import evaluate
from clipforge.models import CLIP, load, save_checkpoint
from clipforge.models.wise import interpolate
from clipforge.train import TrainConfig, finetune, train

SHIFTED = ("pink", "brown", "grey")
TEMPLATES = ("a {}", "a photo of a {}", "one {}", "there is a {}", "a picture of a {}")
# (label, folder, TrainConfig overrides, checkpoint to score inside the run folder)
METHODS: list[tuple[str, str, dict[str, Any], str]] = [
    ("full fine-tune", "full", {}, "final.pt"),
    # EMA only shadows the weights, so the full fine-tune's run (with --ema-decay) holds it.
    ("EMA of full fine-tune", "full", {}, "ema.pt"),
    ("lock-image (LiT)", "lit", {"lock_image": True}, "final.pt"),
    ("LoRA r8", "lora", {"lora_rank": 8, "lora_alpha": 16.0}, "final.pt"),
    ("patch dropout 0.5", "pdrop", {"patch_dropout": 0.5}, "final.pt"),
]


def shifted_test_set(folder: Path, image_size: int, per_class: int) -> Path:
    """Single-object test images of the 15 shifted classes as a class-folder data set."""
    if (folder / "templates.txt").exists():
        return folder
    world = ShapesWorld(image_size, split="test", seed=0)
    i = 0
    for colour in SHIFTED:
        for shape in SHAPES:
            d = folder / f"{colour} {shape}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                world.object_sample(i, shape, colour).image.save(d / f"{k:03d}.png")
                i += 1
    (folder / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return folder


def score(model: CLIP, shifted: Path, per_class: int) -> dict[str, float]:
    tok = get_tokenizer(model.cfg.text.context_length)
    base = evaluate(model, tok, "zeroshot", per_class=per_class)
    new = evaluate(model, tok, "zeroshot", data=[str(shifted)])
    top1 = lambda r: r["tasks"]["zeroshot"]["metrics"]["top1"]  # noqa: E731
    return {"in_domain": top1(new), "base_domain": top1(base)}


def trainable(base: CLIP, cfg: TrainConfig) -> int:
    return finetune.configure(copy.deepcopy(base), cfg).trainable


def architecture(base: Path) -> dict[str, Any]:
    """The ``model`` and ``model_args`` of a base run folder (a fine-tune must build the
    same architecture to take its weights); a bare checkpoint is taken as ``tiny``."""
    import yaml

    f = base / "config.yaml"
    if not f.is_file():
        return {}
    saved = yaml.safe_load(f.read_text())
    return {"model": saved["model"], "model_args": saved.get("model_args") or {}}


def finetune_cfg(a: argparse.Namespace, base: Path, folder: Path, **over: Any) -> TrainConfig:
    lr = a.lr * (a.lora_lr_factor if over.get("lora_rank") else 1.0)
    fields = dict(
        **architecture(base), init=str(base), steps=a.steps, batch_size=a.batch_size, lr=lr,
        warmup=max(1, a.steps // 6), shapes_args={"colours": list(SHIFTED)}, evals="none",
        eval_every=0, threads=a.threads, progress=False, seed=0, out=str(folder),
    )  # fmt: skip
    fields.update(over)
    fields["ckpt_every"] = fields["steps"]
    return from_dict(TrainConfig, fields)


def run(cfg: TrainConfig) -> float:
    """Train ``cfg`` unless its run is finished; the training wall time (seconds, saved
    beside the run so a rerun of the script reports it again)."""
    folder = Path(str(cfg.out))
    stamp = folder / "wall_seconds.txt"
    if (folder / "checkpoints" / "final.pt").exists() and stamp.exists():
        return float(stamp.read_text())
    t0 = time.perf_counter()
    train(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    stamp.write_text(f"{wall:.1f}\n")
    return wall


def samples_per_s(folder: Path) -> float:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    return sum(rates) / len(rates)


def plot_wise(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs = [c["alpha"] for c in curve]
    ax.plot(xs, [100 * c["in_domain"] for c in curve], "o-", label="in-domain (held-out colours)")
    ax.plot(xs, [100 * c["base_domain"] for c in curve], "s-", label="base domain zero-shot")
    ax.set_xlabel("WiSE-FT alpha (0 = base, 1 = full fine-tune)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="base run folder or checkpoint (default: train one)")
    ap.add_argument("--base-steps", type=int, default=250)
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-lr-factor", type=float, default=4.0)
    ap.add_argument("--ema-decay", type=float, default=0.95)
    ap.add_argument("--per-class", type=int, default=10, help="test images per class")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--equal-wall", action="store_true")
    ap.add_argument("--only", default="", help="comma list of folders to run (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.base:
        base_path = Path(a.base)
    else:
        base_path = out / "base"
        cfg = from_dict(TrainConfig, dict(steps=a.base_steps, eval_every=0, progress=False,
                                          out=str(base_path), threads=a.threads))  # fmt: skip
        if not (base_path / "checkpoints" / "final.pt").exists():
            run(cfg)
    base = load(base_path)
    shifted = shifted_test_set(out / "shifted_test", base.cfg.vision.image_size, a.per_class)
    only = {s for s in a.only.split(",") if s}
    results: list[dict[str, Any]] = []

    def report(label: str, model: CLIP, **extra: Any) -> dict[str, Any]:
        row = {"method": label, **score(model, shifted, a.per_class), **extra}
        results.append(row)
        print(json.dumps(row), flush=True)
        return row

    base_cfg = finetune_cfg(a, base_path, out / "none")
    report("base (no fine-tune)", base, seconds=0.0, trainable=0, steps=0)
    walls: dict[str, float] = {}
    for label, name, over, ckpt in METHODS:
        if only and name not in only:
            continue
        if name == "full":
            over = {"ema_decay": a.ema_decay}
        cfg = finetune_cfg(a, base_path, out / name, **over)
        walls[name] = run(cfg)
        model = load(out / name / "checkpoints" / ckpt)
        report(label, model, seconds=round(walls[name], 1), trainable=trainable(base, cfg),
               steps=cfg.steps, samples_per_s=round(samples_per_s(out / name), 1))  # fmt: skip

    curve = []
    if (out / "full" / "checkpoints" / "final.pt").exists():
        full = load(out / "full" / "checkpoints" / "final.pt")
        for alpha in (float(x) for x in a.alphas.split(",")):
            mixed = interpolate(base, full, alpha)
            if alpha == 0.5:
                save_checkpoint(mixed, out / "wise0.5.pt", "clipforge")
            s = score(mixed, shifted, a.per_class)
            curve.append({"alpha": alpha, **s})
            print(json.dumps(curve[-1]), flush=True)
        half = next((c for c in curve if c["alpha"] == 0.5), None)
        if half is not None:
            results.append({"method": "WiSE-FT alpha 0.5 (of full)", "in_domain": half["in_domain"],
                            "base_domain": half["base_domain"], "seconds": walls.get("full", 0.0),
                            "trainable": trainable(base, base_cfg), "steps": a.steps})  # fmt: skip
        plot_wise(curve, out / "wise_curve.png")

    if a.equal_wall and "full" in walls and "pdrop" in walls:
        # As many steps as the full fine-tune's wall time holds at patch dropout's speed.
        steps = max(1, round(a.steps * walls["full"] / walls["pdrop"]))
        cfg = finetune_cfg(a, base_path, out / "pdrop_wall", patch_dropout=0.5, steps=steps)
        wall = run(cfg)
        report("patch dropout 0.5, full's wall time", load(out / "pdrop_wall" / "checkpoints" / "final.pt"),
               seconds=round(wall, 1), trainable=trainable(base, cfg), steps=steps,
               samples_per_s=round(samples_per_s(out / "pdrop_wall"), 1))  # fmt: skip

    (out / "finetune.json").write_text(json.dumps({"results": results, "wise": curve}, indent=2))
    lines = [
        "| method | steps | in-domain top-1 (15 new classes) | base-domain zero-shot (40) "
        "| train wall (s) | samples/s | trainable parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sps = r.get("samples_per_s")
        lines.append(
            f"| {r['method']} | {r['steps']} | {100 * r['in_domain']:.1f}% | "
            f"{100 * r['base_domain']:.1f}% | {r['seconds']:.0f} | "
            f"{sps if sps is not None else '-'} | {r['trainable']:,} |"
        )
    if curve:
        lines += ["", "| WiSE-FT alpha | in-domain | base domain |", "|---|---|---|"]
        lines += [f"| {c['alpha']:g} | {100 * c['in_domain']:.1f}% | {100 * c['base_domain']:.1f}% |"
                  for c in curve]  # fmt: skip
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
