"""Pairwise CLIP vs Symile on the trimodal shapes world (third view = (colour + tag) mod k).

    PYTHONPATH=. python experiments/symile_xor.py            # about a minute on one CPU core

Image and caption go through fixed featurisers (downsampled pixels; bag of words over
the captions' vocabulary) and small trainable heads; the third view through
:class:`CategoricalEncoder`. Both objectives train the same towers for the same steps.
The held-out task: given an image and a caption, pick the third view among all ``k``
values. Pairwise CLIP scores a candidate by ``<a, z> + <b, z>`` (what its three pairwise
terms can express); Symile by the multilinear inner product ``<a * b, z>``. Because the
third view is independent of image and caption separately, pairwise CLIP stays at chance
(``1/k``) however long it trains, while Symile solves the task.

Prints one line per objective and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.data.shapes.trimodal import TriModalShapes
from clipforge.losses import clip_loss, symile_loss
from clipforge.models.categorical import CategoricalEncoder


def featurise(world: TriModalShapes, n: int, vocab: dict[str, int] | None = None):
    """Pixels (scaled to [0, 1]) and bag-of-words vectors of the first caption."""
    samples = [world.sample(i) for i in range(n)]
    pixels = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples])).float() / 255
    words = [s.texts[0].replace(":", "").split() for s in samples]
    if vocab is None:
        vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    bow = torch.zeros(n, len(vocab))
    for row, ws in enumerate(words):
        for w in ws:
            if w in vocab:
                bow[row, vocab[w]] = 1.0
    third = torch.tensor([s.meta["third"] for s in samples])
    return pixels.flatten(1), bow, third, vocab


def head(d_in: int, dim: int, width: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, dim))


class Towers(nn.Module):
    def __init__(self, d_img: int, d_txt: int, k: int, dim: int) -> None:
        super().__init__()
        self.image = head(d_img, dim)
        self.text = head(d_txt, dim)
        self.third = CategoricalEncoder(k, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, px: torch.Tensor, bow: torch.Tensor, third: torch.Tensor):
        a = F.normalize(self.image(px), dim=-1)
        b = F.normalize(self.text(bow), dim=-1)
        return a, b, self.third(third), self.logit_scale.exp().clamp(max=100)


def pairwise_clip(a, b, c, s) -> torch.Tensor:
    return (clip_loss(a, b, s) + clip_loss(a, c, s) + clip_loss(b, c, s)) / 3


@torch.no_grad()
def third_view_accuracy(model: Towers, px, bow, third, k: int, objective: str) -> float:
    model.eval()
    a, b, _, _ = model(px, bow, third)
    z = model.third(torch.arange(k))
    scores = (a * b) @ z.T if objective == "symile" else a @ z.T + b @ z.T
    model.train()
    return float((scores.argmax(dim=1) == third).float().mean())


def run(objective: str, data, test, k: int, args) -> dict[str, float]:
    torch.manual_seed(args.seed)
    px, bow, third, _ = data
    model = Towers(px.shape[1], bow.shape[1], k, args.dim)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, px.shape[0], (args.batch_size,), generator=g)
        a, b, c, s = model(px[idx], bow[idx], third[idx])
        loss = symile_loss(a, b, c, s) if objective == "symile" else pairwise_clip(a, b, c, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {
        "final_loss": float(loss.detach()),
        "train_acc": third_view_accuracy(model, px, bow, third, k, objective),
        "test_acc": third_view_accuracy(model, *test[:3], k, objective),
        "seconds": time.perf_counter() - t0,
    }


def compare(args: argparse.Namespace) -> dict:
    """Train both objectives as ``args`` says; their held-out accuracies and chance."""
    torch.set_num_threads(args.threads)
    k = args.categories
    train = featurise(TriModalShapes(args.image_size, "train", args.seed, k), args.train)
    test = featurise(TriModalShapes(args.image_size, "test", args.seed, k), args.test, train[3])
    results: dict = {"chance": 1 / k}
    for objective in ("pairwise_clip", "symile"):
        results[objective] = run(objective, train, test, k, args)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", type=int, default=8)
    p.add_argument("--train", type=int, default=4000, help="training triples")
    p.add_argument("--test", type=int, default=1000, help="held-out triples")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    return p


def main() -> None:
    args = parser().parse_args()
    results = compare(args)
    for objective in ("pairwise_clip", "symile"):
        r = results[objective]
        print(
            f"{objective:14s} held-out third-view acc {100 * r['test_acc']:5.1f}%  "
            f"(train {100 * r['train_acc']:5.1f}%, loss {r['final_loss']:.3f}, "
            f"{r['seconds']:.0f} s)"
        )
    print(f"{'chance':14s} {100 * results['chance']:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=2)


if __name__ == "__main__":
    main()
