"""Which tower loses colour-shape binding? Linear probes on each tower's embeddings.

    PYTHONPATH=. python experiments/binding_probe.py RUN_DIR [RUN_DIR ...] [--n 1500]

Draws two-object scenes of two different shapes in two different colours from a shapes
world seed no run trained on, and renders each scene and its twin with the two colours
exchanged (:func:`clipforge.data.shapes.twins.swap_colours`). The binding bit of a scene
is whether the alphabetically first shape wears the alphabetically first colour: the
twin flips it, and no bag of colours and shapes can tell it.

For each run it prints:

``text_pick``  the image scores its own caption above the twin's caption (the
               ``compositional`` task's attribute swap on these scenes)
``image_pick`` the caption scores its own image above the twin image
``*_gap``      mean 1 - cos between a scene's and its twin's embedding, and between two
               unrelated scenes' embeddings (the scale the gap is read against)
``*_probe``    held-out accuracy of a logistic regression that reads the binding bit from
               the difference of the tower's normalised embeddings of a scene and its
               twin (trained on the first two thirds of the pairs, each pair in both
               orders): above 50% means the tower has one direction that says which
               colour goes with which shape in every scene, whether or not the other
               tower matches it. (The bit itself need not be linear in one embedding:
               even one-hot colour-shape pairs give it only relative to the twin.)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from clipforge.data.shapes import ShapesWorld
from clipforge.data.shapes.captions import captions_for
from clipforge.data.shapes.twins import swap_colours
from clipforge.models import load, tokenizer_for
from clipforge.models.preprocess import image_transform


def binding_bit(scene) -> int:
    a, b = scene.objects
    first = a if a.shape < b.shape else b
    return int(first.colour == min(a.colour, b.colour))


def scenes(seed: int, n: int, size: int):
    """``n`` (scene, twin) pairs of two different shapes in two different colours."""
    world = ShapesWorld(size, split="test", seed=seed)
    out, i = [], 0
    while len(out) < n:
        sc = world.scene(i)
        i += 1
        if sc.kind != "pair":
            continue
        a, b = sc.objects
        if a.shape == b.shape or a.colour == b.colour:
            continue
        tw = swap_colours(sc, random.Random(i))
        assert tw is not None
        out.append((world.render(sc, world.rng(i, 2)), world.render(tw, world.rng(i, 2)), sc, tw))
    return out


def probe_acc(x: np.ndarray, y: np.ndarray, split: int) -> float:
    """Held-out accuracy of the bit of each scene from (scene - twin), pairs interleaved
    in ``x`` (scene, twin); both orders of a pair stay on one side of ``split`` pairs."""
    d = np.concatenate([x[0::2] - x[1::2], x[1::2] - x[0::2]])
    bits = np.concatenate([y[0::2], y[1::2]])
    n = len(x) // 2
    train = np.r_[0:split, n : n + split]
    test = np.r_[split:n, n + split : 2 * n]
    # No intercept: the two orders of a pair are d and -d with opposite bits.
    clf = LogisticRegression(C=10.0, max_iter=2000, fit_intercept=False).fit(d[train], bits[train])
    return float(clf.score(d[test], bits[test]))


@torch.no_grad()
def probe(run: str, seed: int, n: int, template: int) -> dict[str, float]:
    model = load(run).eval()
    tok = tokenizer_for(model)
    tf = image_transform(model.cfg)
    data = scenes(seed, n, model.cfg.vision.image_size)
    ims = torch.stack([tf(im) for pair in data for im in pair[:2]])
    caps = [captions_for(s)[template] for pair in data for s in pair[2:]]
    bits = np.array([binding_bit(s) for pair in data for s in pair[2:]])
    img = torch.cat([model.encode_image(c, normalize=True) for c in ims.split(256)])
    txt = torch.cat(
        [
            model.encode_text(tok(caps[k : k + 256]), normalize=True)
            for k in range(0, len(caps), 256)
        ]
    )
    i0, i1, t0, t1 = img[0::2], img[1::2], txt[0::2], txt[1::2]
    res = {
        "text_pick": (
            ((i0 * t0).sum(-1) > (i0 * t1).sum(-1)).float().mean()
            + ((i1 * t1).sum(-1) > (i1 * t0).sum(-1)).float().mean()
        ).item()
        / 2,
        "image_pick": (
            ((t0 * i0).sum(-1) > (t0 * i1).sum(-1)).float().mean()
            + ((t1 * i1).sum(-1) > (t1 * i0).sum(-1)).float().mean()
        ).item()
        / 2,
        "text_gap": (1 - (t0 * t1).sum(-1)).mean().item(),
        "text_gap_other": (1 - (t0 * t0.roll(1, 0)).sum(-1)).mean().item(),
        "image_gap": (1 - (i0 * i1).sum(-1)).mean().item(),
        "image_gap_other": (1 - (i0 * i0.roll(1, 0)).sum(-1)).mean().item(),
    }
    split = 2 * n // 3
    res["image_probe"] = probe_acc(img.numpy(), bits, split)
    res["text_probe"] = probe_acc(txt.numpy(), bits, split)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--n", type=int, default=1500, help="scene pairs (each adds its twin)")
    ap.add_argument(
        "--template", type=int, default=3, help="caption template: 0 relation, 3 'A and B'"
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    for run in a.runs:
        r = probe(run, a.seed, a.n, a.template)
        print(Path(run).name, " ".join(f"{k}={v:.3f}" for k, v in r.items()))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
