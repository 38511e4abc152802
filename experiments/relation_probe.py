"""Relation-swap and attribute-swap accuracy of trained models on held-out shapes scenes.

    python experiments/relation_probe.py RUN_DIR [RUN_DIR ...] [--seed 12345] [--n 600]

For every two-object scene of a shapes world drawn with a seed no run trained on, the
model scores the true caption against the same caption with the relation flipped
("left of" <-> "right of", "above" <-> "below") and with the two colours exchanged.
Also prints how far apart the text tower puts a caption and its flip (1 - cosine): if
that is ~0 the text side cannot carry a relation at all.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from clipforge.data.shapes import ShapesConfig, ShapesWorld
from clipforge.data.shapes.hardneg import perturb
from clipforge.data.tokenizer import get_tokenizer
from clipforge.models import load
from clipforge.models.preprocess import image_transform


def pair_scenes(seed: int, n: int, image_size: int):
    world = ShapesWorld(image_size, split="test", seed=seed)
    out, i = [], 0
    while len(out) < n:
        s = world.sample(i)
        if s.meta["kind"] == "pair":
            out.append(s)
        i += 1
    return out


@torch.no_grad()
def probe(run: str, seed: int, n: int) -> dict[str, float]:
    model = load(run)
    size = model.cfg.vision.image_size
    tok = get_tokenizer(model.cfg.text.context_length)
    tf = image_transform(model.cfg)
    scenes = pair_scenes(seed, n, size)
    images = torch.stack([tf(s.image) for s in scenes])
    img = model.encode_image(images, normalize=True)
    res: dict[str, float] = {}
    for kind in ("relation", "attribute"):
        for template in (0, 2):
            pos, neg, keep = [], [], []
            for k, s in enumerate(scenes):
                cap = perturb(s.meta, kind, random.Random(k), template)
                if cap is None:
                    continue
                pos.append(s.texts[template])
                neg.append(cap)
                keep.append(k)
            tp = model.encode_text(tok(pos), normalize=True)
            tn = model.encode_text(tok(neg), normalize=True)
            im = img[keep]
            acc = ((im * tp).sum(-1) > (im * tn).sum(-1)).float().mean().item()
            res[f"{kind}/t{template}"] = acc
            if template == 0:
                res[f"{kind}/text_gap"] = (1 - (tp * tn).sum(-1)).mean().item()
    # Where is a lone object? True position caption against the reflected one.
    world = ShapesWorld(size, split="test", seed=seed, config=ShapesConfig(position_captions=True))
    singles = [world.sample(i) for i in range(3 * n)]
    singles = [s for s in singles if s.meta["kind"] == "single"][:n]
    pos, neg, keep = [], [], []
    for k, s in enumerate(singles):
        cap = perturb(s.meta, "position", random.Random(k), len(s.texts) - 1)
        if cap is not None:
            pos.append(s.texts[-1])
            neg.append(cap)
            keep.append(k)
    im = model.encode_image(torch.stack([tf(singles[k].image) for k in keep]), normalize=True)
    tp = model.encode_text(tok(pos), normalize=True)
    tn = model.encode_text(tok(neg), normalize=True)
    res["position/single"] = ((im * tp).sum(-1) > (im * tn).sum(-1)).float().mean().item()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--n", type=int, default=600)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for run in a.runs:
        r = probe(run, a.seed, a.n)
        print(Path(run).name, " ".join(f"{k}={v:.3f}" for k, v in r.items()))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
