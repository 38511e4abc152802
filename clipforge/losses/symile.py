"""Symile (Saporta et al., 2024, "Contrasting with Symile: Simple Model-Agnostic
Representation Learning for Unlimited Modalities")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, reject_hard_negatives, weighted_mean
from clipforge.losses.registry import LossSpec, register
from clipforge.models.categorical import CategoricalEncoder
from clipforge.ranges import integers


def multilinear_scores(
    anchor_a: torch.Tensor, anchor_b: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``[N, M]`` scores ``sum_d a_id b_id c_jd``: the multilinear inner product (MIP)."""
    return (anchor_a * anchor_b) @ candidates.T


def symile_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    scale: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrast one modality at a time against the batch, scoring triples by their MIP::

        MIP(x, y, z) = sum_d x_d y_d z_d
        L_a = 1/B sum_i -log e^{s MIP(a_i, b_i, c_i)} / sum_j e^{s MIP(a_j, b_i, c_i)}
        L = (L_a + L_b + L_c) / 3

    Pairwise CLIP sums bilinear terms and so can only use what each pair of modalities
    shares; the trilinear score can represent dependence that only shows in all three at
    once (e.g. ``c = a XOR b``), which is what Symile's total-correlation bound asks
    for. Row ``i`` of ``a``, ``b`` and ``c`` is one sample; ``weights`` ``[B]`` weight rows.
    """
    target = torch.arange(a.shape[0], device=a.device)
    terms = [
        F.cross_entropy(scale * multilinear_scores(y, z, x), target, reduction="none")
        for x, y, z in ((a, b, c), (b, a, c), (c, a, b))
    ]
    return sum(weighted_mean(t, weights) for t in terms) / 3  # type: ignore[return-value]


ONE_CAPTION = "it scores (image, caption, third view) triples, one caption per image"


class SymileObjective(Objective):
    """:func:`symile_loss` over image, caption and a categorical third view.

    The third view is ``Sample.meta["third"]``, an integer in ``[0, categories)`` (see
    :mod:`clipforge.data.shapes.trimodal`); its encoder is a parameter of this objective, so it
    is trained and checkpointed with the model.
    """

    batch_keys = ("third",)

    def __init__(self, categories: int, embed_dim: int) -> None:
        super().__init__()
        check_field(SymileOptions, "symile_categories", categories)
        self.third = CategoricalEncoder(categories, embed_dim)

    def forward(self, f: Features) -> torch.Tensor:
        if f.owner is not None:
            raise ClipforgeError(
                f"loss 'symile' needs one caption per image and no hard negatives: {ONE_CAPTION}"
            )
        index = f.extra["third"]
        if bool((index < 0).any()) or bool((index >= self.third.categories).any()):
            raise ClipforgeError(
                f"third view out of range [0, {self.third.categories}); set --symile-categories"
            )
        return symile_loss(f.image, f.text, self.third(index), f.scale, f.weights)


@dataclass
class SymileOptions:
    symile_categories: int = option(
        8, "symile: number of values of the third view (meta 'third')", check=integers(2)
    )


def _build(o: SymileOptions, run: Any) -> Objective:
    from clipforge.models import get_model_config

    reject_hard_negatives(run, "symile", ONE_CAPTION)
    if getattr(run, "caption", "random") == "all":
        raise ClipforgeError(f"loss 'symile' does not support --caption all: {ONE_CAPTION}")
    embed_dim = get_model_config(run.model, run.model_args).embed_dim
    return SymileObjective(o.symile_categories, embed_dim)


register(
    "symile",
    LossSpec(
        _build,
        summary="multilinear inner product of image, caption and meta 'third' (Symile)",
        options=SymileOptions,
    ),
)
