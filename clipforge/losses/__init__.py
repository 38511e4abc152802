"""Contrastive objectives.

A loss is a pure function of L2-normalised embeddings (``clip_loss(image, text, scale,
...)``) plus a thin :class:`Objective` module that binds its options and parameters and
reads a :class:`Features` batch. ``LOSSES`` maps config names to :class:`LossSpec`
entries: how to build the objective from the run config and how the model's temperature
(and bias) start. Adding a method is one module and one ``LOSSES.add`` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipforge.losses.base import Features, Objective, weighted_mean
from clipforge.losses.clip import ClipObjective, clip_loss
from clipforge.losses.siglip import SiglipObjective, siglip_loss
from clipforge.registry import Registry


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and the temperature/bias its paper initialises with.

    ``build(cfg)`` receives the run's ``TrainConfig`` and returns the objective module.
    """

    build: Callable[[Any], Objective]
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    summary: str = ""


LOSSES: Registry[LossSpec] = Registry("loss")
LOSSES.add(
    "clip",
    LossSpec(
        lambda cfg: ClipObjective(getattr(cfg, "hard_negative_weight", 1.0)),
        summary="symmetric InfoNCE (CLIP)",
    ),
)
# SigLIP starts at t' = log 10 and b = -10 so the many negatives do not dominate early.
LOSSES.add(
    "siglip",
    LossSpec(lambda cfg: SiglipObjective(), math.log(10.0), -10.0, "pairwise sigmoid (SigLIP)"),
)


def get_loss(name: str) -> LossSpec:
    return LOSSES.get(name)


__all__ = [
    "LOSSES",
    "Features",
    "LossSpec",
    "Objective",
    "clip_loss",
    "get_loss",
    "siglip_loss",
    "weighted_mean",
]
