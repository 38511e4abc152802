"""``zslp``: a linear probe initialised from the zero-shot classifier (CLAP's ZS-LP).

Logits are ``scale * x W^T`` with ``W`` starting at the normalised class embeddings, so
step 0 is exactly zero-shot; full-batch Adam on cross-entropy moves it. The number of
steps is chosen on the validation shots among checkpoints of one run (0 included: the
probe may stay zero-shot), then the probe is retrained on all shots for that many steps.
At one shot per class it trains for the option's ``epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register
from clipforge.config import option
from clipforge.ranges import count, count0, positive


@dataclass
class ZSLPOptions:
    epochs: int = option(100, "full-batch steps when there is no validation split", check=count0)
    max_epochs: int = option(300, "longest run the validation search considers", check=count)
    lr: float = option(1e-3, "Adam learning rate", check=positive)


CHECKPOINTS = (0, 10, 25, 50, 100, 200, 300)


def train_zslp(
    text: torch.Tensor, scale: float, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
    seed: int, every: tuple[int, ...] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:  # fmt: skip
    """The weights after ``steps`` steps, and a copy at each step count in ``every``."""
    torch.manual_seed(seed)
    w = torch.nn.Parameter(text.clone())
    opt = torch.optim.Adam([w], lr=lr)
    snaps = {0: w.detach().clone()} if 0 in every else {}
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(scale * x @ w.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in every:
            snaps[step] = w.detach().clone()
    return w.detach(), snaps


def zslp_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    return p["scale"] * x @ t["weight"].T


def fit(shots: Shots, o: ZSLPOptions) -> tuple[Tensors, Params]:
    steps, table = o.epochs, None
    if shots.has_val:
        xt, yt = shots.part("train")
        xv, yv = shots.part("val")
        grid = tuple(c for c in CHECKPOINTS if c <= o.max_epochs)
        _, snaps = train_zslp(shots.text, shots.scale, xt, yt, max(grid), o.lr, shots.seed, grid)
        scored = [({"epochs": c}, accuracy(shots.scale * xv @ snaps[c].T, yv)) for c in grid]
        # Ties go to fewer steps: the probe closer to zero-shot.
        steps = max(scored, key=lambda r: (r[1], -r[0]["epochs"]))[0]["epochs"]
        table = scored
    x, y = shots.part("all")
    w, _ = train_zslp(shots.text, shots.scale, x, y, steps, o.lr, shots.seed)
    return {"weight": w}, chosen(shots, {"epochs": steps, "lr": o.lr, "scale": shots.scale}, table)


register(
    "zslp",
    Method(
        "linear probe initialised from the zero-shot weights, steps chosen on validation",
        fit, zslp_logits, ZSLPOptions, "CLAP (Silva-Rodriguez et al. 2024), ZS-LP",
    ),
)  # fmt: skip
