"""Contrastive objectives.

A loss is a pure function ``loss(image, text, scale, bias=None, **opts) -> Tensor`` of
L2-normalised embeddings; ``LOSSES`` maps config names to :class:`LossSpec` entries that
also say how the model's temperature (and bias) start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipforge.losses.clip import clip_loss
from clipforge.losses.siglip import siglip_loss
from clipforge.registry import Registry

LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and the temperature/bias its paper initialises with."""

    fn: LossFn
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None


LOSSES: Registry[LossSpec] = Registry("loss")
LOSSES.add("clip", LossSpec(clip_loss))
# SigLIP starts at t' = log 10 and b = -10 so the many negatives do not dominate early.
LOSSES.add("siglip", LossSpec(siglip_loss, math.log(10.0), -10.0))


def get_loss(name: str) -> LossSpec:
    return LOSSES.get(name)


__all__ = ["LOSSES", "LossSpec", "clip_loss", "get_loss", "siglip_loss"]
