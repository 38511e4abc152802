"""Contrastive objectives.

A loss is a pure function of L2-normalised embeddings (``clip_loss(image, text, scale,
...)``) plus a thin :class:`Objective` module that binds its options and parameters and
reads a :class:`Features` batch. ``LOSSES`` maps config names to :class:`LossSpec`
entries: how to build the objective from the run config and how the model's temperature
(and bias) start. Each objective module declares its options dataclass and registers
itself (:func:`~clipforge.losses.registry.register`); every module of this package is
imported here, so adding a method is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from clipforge.losses.alignment import alignment_loss
from clipforge.losses.base import Features, Objective, weighted_mean
from clipforge.losses.clip import clip_loss
from clipforge.losses.cwcl import cwcl_loss
from clipforge.losses.distill import similarity_kd_loss
from clipforge.losses.expression import SumObjective, is_expression, parse_expression
from clipforge.losses.infoloob import cloob_loss, infoloob_loss
from clipforge.losses.mixup import mixup_loss
from clipforge.losses.rafa import rafa_loss
from clipforge.losses.registry import LOSSES, LossSpec, loss_options_class
from clipforge.losses.siglip import siglip_loss
from clipforge.losses.symile import symile_loss
from clipforge.losses.uniformity import uniformity_loss

# Every module of the package is imported, so an objective registers itself (and its
# options) just by being a file here; the imports above are the public functions.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
LossOptions = loss_options_class()
"""The run config's ``loss`` section: the options of every registered objective."""


def get_loss(name: str) -> LossSpec:
    """The spec of a registered loss or of a loss expression such as ``clip+0.1*uniformity``."""
    if not is_expression(name):
        return LOSSES.get(name)
    terms = [(w, n, LOSSES.get(n)) for w, n in parse_expression(name)]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][2]
    lead = next((spec for _, _, spec in terms if spec.contrastive), terms[0][2])
    return LossSpec(
        lambda _, run: SumObjective([(w, n, spec.build(run)) for w, n, spec in terms]),
        lead.init_logit_scale,
        lead.init_logit_bias,
        " + ".join(f"{w:g} x {n}" for w, n, _ in terms),
        any(spec.contrastive for _, _, spec in terms),
    )


__all__ = [
    "LOSSES",
    "LossOptions",
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
