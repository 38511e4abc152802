"""Can the text tower learn colour-shape binding at all? Text alone, no images.

    PYTHONPATH=. python experiments/text_binding.py [--bilinear 128] [--steps 300]

Trains the ``tiny`` preset's text tower by itself to put each two-object caption nearer
a paraphrase of it (another template of the same scene: "a blue circle and a red square"
for "a red square and a blue circle") than its colour swap ("a blue square and a red
circle"), by InfoNCE over a batch of 64: each caption against the batch's paraphrases
and swaps (temperature 0.1, AdamW lr 2e-3). Every 50 steps it prints the share of 500
held-out scenes whose "A and B" caption is nearer its reordering "B and A" than its
own swap "A' and B'" (the hardest case: the swap keeps the word order, the paraphrase
does not). ``--bilinear R`` adds the text tower's second-order neighbour term
(``text.bilinear``, :mod:`clipforge.models.bilinear`).
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from clipforge.data.shapes import ShapesWorld
from clipforge.data.shapes.captions import captions_for
from clipforge.data.shapes.twins import swap_colours
from clipforge.models import create_model, tokenizer_for


def caption_pairs(split: str, n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``n`` (captions, colour-swapped captions) of two-object scenes in two colours."""
    world, out, i = ShapesWorld(32, split=split, seed=seed), [], 0
    while len(out) < n:
        sc = world.scene(i)
        i += 1
        if sc.kind == "pair" and sc.objects[0].colour != sc.objects[1].colour:
            twin = swap_colours(sc, random.Random(i))
            assert twin is not None
            out.append((captions_for(sc), captions_for(twin)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bilinear", type=int, default=0, help="text.bilinear rank (0: off)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    model = create_model("tiny", {"text.bilinear": a.bilinear} if a.bilinear else {})
    tok, text = tokenizer_for(model), model.text
    train, test = caption_pairs("train", 20000, 0), caption_pairs("test", 500, 7)
    opt = torch.optim.AdamW(text.parameters(), lr=2e-3, weight_decay=0.05)
    rng = random.Random(a.seed)

    def embed(caps: list[str]) -> torch.Tensor:
        return F.normalize(text(tok(caps)), dim=-1)

    @torch.no_grad()
    def held_out() -> float:
        text.eval()
        c, p, s = (embed([x[k] for x in side]) for side, k in
                   (([c for c, _ in test], 3), ([c for c, _ in test], 4), ([n for _, n in test], 3)))  # fmt: skip
        text.train()
        return float(((c * p).sum(-1) > (c * s).sum(-1)).float().mean())

    for step in range(a.steps + 1):
        if step % 50 == 0:
            print(f"step {step:4d}  held-out nearer the paraphrase than the swap: {held_out():.3f}",
                  flush=True)  # fmt: skip
        if step == a.steps:
            break
        batch = rng.sample(train, 64)
        t1, t2 = rng.sample(range(5), 2)
        anchor = embed([c[t1] for c, _ in batch])
        others = embed([c[t2] for c, _ in batch] + [n[t1] for _, n in batch])
        loss = F.cross_entropy(10 * anchor @ others.T, torch.arange(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
