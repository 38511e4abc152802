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

from clipforge.errors import ClipforgeError
from clipforge.losses import cwcl, infoloob, symile
from clipforge.losses.alignment import AlignmentObjective, alignment_loss
from clipforge.losses.base import Features, Objective, reject_hard_negatives, weighted_mean
from clipforge.losses.clip import ClipObjective, clip_loss
from clipforge.losses.cwcl import CWCLObjective, cwcl_loss
from clipforge.losses.distill import DistillObjective, similarity_kd_loss
from clipforge.losses.expression import SumObjective, is_expression, parse_expression
from clipforge.losses.infoloob import InfoLOOBObjective, cloob_loss, infoloob_loss
from clipforge.losses.mixup import MixupObjective, mixup_loss
from clipforge.losses.rafa import RaFAObjective, rafa_loss
from clipforge.losses.siglip import SiglipObjective, siglip_loss
from clipforge.losses.symile import SymileObjective, symile_loss
from clipforge.losses.uniformity import UniformityObjective, uniformity_loss
from clipforge.registry import Registry


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and the temperature/bias its paper initialises with.

    ``build(cfg)`` receives the run's ``TrainConfig`` and returns the objective module.
    ``contrastive`` is False for regularisers (uniformity, alignment, RaFA) that only make
    sense added to a contrastive loss; a loss expression takes its temperature and bias
    from its first contrastive term.
    """

    build: Callable[[Any], Objective]
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    summary: str = ""
    contrastive: bool = True


def _opt(cfg: Any, name: str, default: Any) -> Any:
    # Objectives are also built from partial configs (tests, scripts): missing fields
    # fall back to the TrainConfig default.
    return getattr(cfg, name, default)


def _embed_dim(cfg: Any) -> int:
    from clipforge.models import get_model_config

    return get_model_config(cfg.model, cfg.model_args).embed_dim


# Objectives that cannot use hard-negative captions refuse them when built, before a run
# starts; their forward passes check again (data may bring its own negatives).
def _infoloob(cfg: Any) -> Objective:
    obj = InfoLOOBObjective(_opt(cfg, "hopfield_beta", None))
    if obj.hopfield_beta is not None:
        reject_hard_negatives(cfg, "infoloob", infoloob.NO_HARD_NEGATIVES)
    return obj


def _cwcl(cfg: Any) -> Objective:
    reject_hard_negatives(cfg, "cwcl", cwcl.NO_HARD_NEGATIVES)
    return CWCLObjective(_opt(cfg, "reference", None))


def _symile(cfg: Any) -> Objective:
    reject_hard_negatives(cfg, "symile", symile.ONE_CAPTION)
    if _opt(cfg, "caption", "random") == "all":
        raise ClipforgeError(f"loss 'symile' does not support --caption all: {symile.ONE_CAPTION}")
    return SymileObjective(_opt(cfg, "symile_categories", 8), _embed_dim(cfg))


LOSSES: Registry[LossSpec] = Registry("loss")
LOSSES.add(
    "clip",
    LossSpec(
        lambda cfg: ClipObjective(_opt(cfg, "hard_negative_weight", 1.0)),
        summary="symmetric InfoNCE (CLIP)",
    ),
)
# SigLIP starts at t' = log 10 and b = -10 so the many negatives do not dominate early.
LOSSES.add(
    "siglip",
    LossSpec(lambda cfg: SiglipObjective(), math.log(10.0), -10.0, "pairwise sigmoid (SigLIP)"),
)
# CLOOB keeps the inverse temperature fixed at 30 (the objective cuts its gradient).
LOSSES.add(
    "infoloob",
    LossSpec(
        _infoloob,
        math.log(30.0),
        summary="InfoNCE without the positive in the denominator (+ --hopfield-beta: CLOOB)",
    ),
)
LOSSES.add(
    "cwcl",
    LossSpec(
        _cwcl,
        summary="soft targets from a frozen --reference tower's within-modality similarities",
    ),
)
LOSSES.add(
    "distill",
    LossSpec(
        lambda cfg: DistillObjective(
            _opt(cfg, "teacher", None),
            _opt(cfg, "distill_weight", 0.5),
            _opt(cfg, "distill_temperature", None),
            _opt(cfg, "distill_feature_weight", 0.0),
            _opt(cfg, "teacher_ema_decay", 0.999),
            _opt(cfg, "hard_negative_weight", 1.0),
        ),
        summary="CLIP + KL to a --teacher's similarity distributions (frozen, ema or data)",
    ),
)
LOSSES.add(
    "mixup",
    LossSpec(
        lambda cfg: MixupObjective(_opt(cfg, "seed", 0), _opt(cfg, "mixup_alpha", 0.5)),
        summary="InfoNCE with geodesic image-text mixes as hard negatives (m2-mix)",
    ),
)
LOSSES.add(
    "symile",
    LossSpec(
        _symile,
        summary="multilinear inner product of image, caption and meta 'third' (Symile)",
    ),
)
LOSSES.add(
    "alignment",
    LossSpec(
        lambda cfg: AlignmentObjective(),
        summary="mean squared distance of positive pairs (add to a loss: clip+0.1*alignment)",
        contrastive=False,
    ),
)
LOSSES.add(
    "uniformity",
    LossSpec(
        lambda cfg: UniformityObjective(),
        summary="log mean exp(-2 d^2) within each modality (add to a loss: clip+0.1*uniformity)",
        contrastive=False,
    ),
)
LOSSES.add(
    "rafa",
    LossSpec(
        lambda cfg: RaFAObjective(_opt(cfg, "seed", 0)),
        summary="pull both modalities to shared random references (add to a loss: clip+rafa)",
        contrastive=False,
    ),
)


def get_loss(name: str) -> LossSpec:
    """The spec of a registered loss or of a loss expression such as ``clip+0.1*uniformity``."""
    if not is_expression(name):
        return LOSSES.get(name)
    terms = [(w, n, LOSSES.get(n)) for w, n in parse_expression(name)]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][2]
    lead = next((spec for _, _, spec in terms if spec.contrastive), terms[0][2])
    return LossSpec(
        lambda cfg: SumObjective([(w, n, spec.build(cfg)) for w, n, spec in terms]),
        lead.init_logit_scale,
        lead.init_logit_bias,
        " + ".join(f"{w:g} x {n}" for w, n, _ in terms),
        any(spec.contrastive for _, _, spec in terms),
    )


__all__ = [
    "LOSSES",
    "Features",
    "LossSpec",
    "Objective",
    "alignment_loss",
    "clip_loss",
    "cloob_loss",
    "cwcl_loss",
    "get_loss",
    "infoloob_loss",
    "mixup_loss",
    "parse_expression",
    "rafa_loss",
    "siglip_loss",
    "similarity_kd_loss",
    "symile_loss",
    "uniformity_loss",
    "weighted_mean",
]
