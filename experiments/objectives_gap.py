"""Train one small model per objective on the shapes world; report accuracy and geometry.

    PYTHONPATH=. python experiments/objectives_gap.py --out /tmp/objectives   # ~10-20 min

Each objective trains the same micro model (16 px images, width 32, one layer per
tower: the size the tests use) from the same seed on the same samples. Afterwards, on
held-out retrieval scenes with their canonical captions, it reports the trainer's
zero-shot top-1 and image->text R@1, the modality gap ``||mean(x) - mean(y)||`` of the
L2-normalised embeddings (Liang et al., 2022), and Wang & Isola's alignment (mean
squared positive distance; lower = pairs closer) and uniformity (log mean exp(-2 d^2),
averaged over the two modalities; lower = more spread). A cheap sanity check of what each
term does to the embedding geometry, not a benchmark: one seed, a tiny model, minutes of
training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clipforge.config import from_dict
from clipforge.data.shapes import ShapesWorld
from clipforge.data.tokenizer import get_tokenizer
from clipforge.losses import alignment_loss, uniformity_loss
from clipforge.models import image_transform, load
from clipforge.train import TrainConfig, train

MICRO = {
    "embed_dim": 32,
    "vision.image_size": 16,
    "vision.patch_size": 4,
    "vision.width": 32,
    "vision.layers": 1,
    "vision.heads": 2,
    "text.width": 32,
    "text.layers": 1,
    "text.heads": 2,
    "text.context_length": 24,
}

LOSSES = [
    ("clip", {}),
    ("siglip", {}),
    ("infoloob", {}),
    ("infoloob", {"hopfield_beta": 8.0}),
    ("mixup", {}),
    ("clip+0.1*uniformity+0.1*alignment", {}),
    ("clip+rafa", {}),
    ("distill", {"teacher": "ema", "teacher_ema_decay": 0.99}),
]


@torch.no_grad()
def geometry(run: Path, n: int = 500) -> dict[str, float]:
    model = load(run)
    world = ShapesWorld(model.cfg.vision.image_size, split="test", seed=0)
    tf = image_transform(model.cfg)
    samples = [world.sample(i) for i in range(n)]
    images = torch.stack([tf(s.image) for s in samples])
    tokens = get_tokenizer(model.cfg.text.context_length)([s.texts[0] for s in samples])
    x = model.encode_image(images, normalize=True)
    y = model.encode_text(tokens, normalize=True)
    return {
        "gap": float((x.mean(0) - y.mean(0)).norm()),
        "alignment": float(alignment_loss(x, y)),
        "uniformity": float(uniformity_loss(x, y)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the runs and results.json")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    out = Path(args.out)
    results = []
    for loss, opts in LOSSES:
        label = loss + "".join(f" {k}={v}" for k, v in opts.items())
        t0 = time.perf_counter()
        cfg = from_dict(TrainConfig, dict(
            model_args=dict(MICRO), loss=loss, batch_size=args.batch_size, steps=args.steps,
            warmup=20, lr=2e-3, eval_every=0, ckpt_every=args.steps, log_every=50,
            eval_per_class=10, eval_pairs=500, progress=False, threads=args.threads,
            out=str(out / label.replace(" ", "_").replace("*", "x").replace("+", "_")), **opts,
        ))  # fmt: skip
        run = train(cfg)
        final = json.loads((run / "eval.json").read_text())
        row = {
            "loss": label,
            "zeroshot_top1": final["zeroshot/top1"],
            "i2t_R@1": final["retrieval/i2t_R@1"],
            **geometry(run),
            "seconds": time.perf_counter() - t0,
        }
        results.append(row)
        print(
            f"{label:42s} zs {100 * row['zeroshot_top1']:5.1f}%  i2t@1 "
            f"{100 * row['i2t_R@1']:5.1f}%  gap {row['gap']:.3f}  align "
            f"{row['alignment']:.3f}  unif {row['uniformity']:.3f}  ({row['seconds']:.0f} s)",
            flush=True,
        )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
