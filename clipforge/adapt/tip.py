"""``tip``: Tip-Adapter's training-free cache model (Zhang et al. 2022).

The cache holds the shot features as keys ``F [N, D]`` and their one-hot labels as
values ``L [N, C]``. A query's affinity to each key is ``exp(-beta (1 - x F^T))``; the
adapter scores ``scale * x T^T + alpha * A L``. ``alpha`` and ``beta`` are chosen on the
validation shots with the cache built from the other shots (the search never sees test
features: the fault of Tip-Adapter's own search, its issue #11), then the cache is
rebuilt from all shots. At one shot per class they are the option defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register, select
from clipforge.config import option
from clipforge.ranges import non_negative

ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0)
BETAS = (1.0, 2.0, 3.5, 5.5, 7.0, 10.0)


@dataclass
class TipOptions:
    alpha: float = option(1.0, "cache weight when there is no validation split", check=non_negative)
    beta: float = option(
        5.5, "affinity sharpness when there is no validation split", check=non_negative
    )


def cache_logits(
    keys: torch.Tensor, values: torch.Tensor, x: torch.Tensor, beta: float
) -> torch.Tensor:
    """``exp(-beta (1 - x keys^T)) values``: every key votes for its class by affinity."""
    return torch.exp(-beta * (1 - x @ keys.T)) @ values


def tip_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    zs = p["scale"] * x @ t["text"].T
    return zs + p["alpha"] * cache_logits(t["keys"], t["values"], x, p["beta"])


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, num_classes).float()


def search(shots: Shots, keys: torch.Tensor | None = None) -> tuple[Params, list]:
    """Best (alpha, beta) on the validation shots, the cache from the training part (or
    the given ``keys`` for the training part's labels)."""
    xt, yt = shots.part("train")
    xv, yv = shots.part("val")
    t = {"text": shots.text, "keys": xt if keys is None else keys,
         "values": one_hot(yt, shots.num_classes)}  # fmt: skip
    grid = [{"alpha": a, "beta": b} for a in ALPHAS for b in BETAS]
    return select(grid, lambda p: accuracy(tip_logits(t, {"scale": shots.scale, **p}, xv), yv))


def fit(shots: Shots, o: TipOptions) -> tuple[Tensors, Params]:
    hp, table = {"alpha": o.alpha, "beta": o.beta}, None
    if shots.has_val:
        hp, table = search(shots)
    x, y = shots.part("all")
    tensors = {"text": shots.text, "keys": x.clone(), "values": one_hot(y, shots.num_classes)}
    return tensors, chosen(shots, {**hp, "scale": shots.scale}, table)


register(
    "tip",
    Method(
        "Tip-Adapter: cache of shot keys/values blended with zero-shot (alpha, beta); "
        "training-free", fit, tip_logits, TipOptions, "Zhang et al. 2022, Tip-Adapter",
    ),
)  # fmt: skip
