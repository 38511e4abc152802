"""``tip_f``: Tip-Adapter-F, the Tip-Adapter cache with its keys fine-tuned.

The keys start as the shot features and are trained by AdamW (constant learning rate,
mini-batches of 256 shots) on cross-entropy of the full Tip-Adapter logits; values, the
zero-shot classifier and both towers stay fixed. ``alpha`` and ``beta`` come from
Tip-Adapter's validation search; the number of epochs is chosen on the validation shots
after each epoch of a run on the other shots (never on test features, unlike the
original's best-epoch pick, its issue #11), then the keys are retrained on all shots for
that many epochs. At one shot per class the option defaults are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register
from clipforge.adapt.tip import one_hot, search, tip_logits
from clipforge.config import option
from clipforge.ranges import count, count0, non_negative, positive

BATCH = 256


@dataclass
class TipFOptions:
    alpha: float = option(1.0, "cache weight when there is no validation split", check=non_negative)
    beta: float = option(
        5.5, "affinity sharpness when there is no validation split", check=non_negative
    )
    epochs: int = option(20, "epochs when there is no validation split", check=count0)
    max_epochs: int = option(40, "longest run the validation search considers", check=count)
    lr: float = option(1e-3, "AdamW learning rate of the keys", check=positive)


def train_keys(
    t: Tensors, p: Params, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
    after_epoch=None,
) -> torch.Tensor:  # fmt: skip
    """Keys after ``epochs`` epochs of AdamW on the cross-entropy of ``tip_logits``."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.nn.Parameter(t["keys"].clone())
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), BATCH):
            i = order[s : s + BATCH]
            loss = torch.nn.functional.cross_entropy(tip_logits({**t, "keys": keys}, p, x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch, keys.detach())
    return keys.detach()


def fit(shots: Shots, o: TipFOptions) -> tuple[Tensors, Params]:
    k = shots.num_classes
    hp, epochs, table = {"alpha": o.alpha, "beta": o.beta}, o.epochs, None
    if shots.has_val:
        hp, _ = search(shots)
        xt, yt = shots.part("train")
        xv, yv = shots.part("val")
        t = {"text": shots.text, "keys": xt, "values": one_hot(yt, k)}
        p = {"scale": shots.scale, **hp}
        table = [({"epochs": 0}, accuracy(tip_logits(t, p, xv), yv))]

        def score(epoch: int, keys: torch.Tensor) -> None:
            table.append(({"epochs": epoch}, accuracy(tip_logits({**t, "keys": keys}, p, xv), yv)))

        train_keys(t, p, xt, yt, o.max_epochs, o.lr, shots.seed, score)
        epochs = max(table, key=lambda r: (r[1], -r[0]["epochs"]))[0]["epochs"]
    x, y = shots.part("all")
    t = {"text": shots.text, "keys": x.clone(), "values": one_hot(y, k)}
    p = {"scale": shots.scale, **hp}
    t["keys"] = train_keys(t, p, x, y, epochs, o.lr, shots.seed)
    return t, chosen(shots, {**p, "epochs": epochs, "lr": o.lr}, table)


register(
    "tip_f",
    Method(
        "Tip-Adapter-F: the Tip-Adapter cache with fine-tuned keys, epochs chosen on validation",
        fit, tip_logits, TipFOptions, "Zhang et al. 2022, Tip-Adapter-F",
    ),
)  # fmt: skip
