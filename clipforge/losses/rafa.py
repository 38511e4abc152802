"""Random feature alignment, RaFA (Yamaguchi et al., 2025, CLIP-Refine: "Post-pre-training
for Modality Alignment in Vision-Language Foundation Models")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.losses.base import Features, StepSeeded
from clipforge.losses.registry import LossSpec, register


def random_references(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points of the prior: standard normal draws projected onto the unit sphere."""
    return F.normalize(torch.randn(n, dim, generator=generator), dim=-1)


def rafa_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    references: torch.Tensor,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pull each pair towards one shared random reference ``r_i``::

        L = 1/2 [ 1/B sum_i ||x_i - r_i||^2 + 1/T' sum_j ||y_j - r_{o(j)}||^2 ]

    Image and caption chase the same target, so their gap closes, and the targets follow
    a prior that spreads over the sphere, so the features do not collapse while doing it.
    ``references`` ``[B, D]``; captions of one image share its reference and
    hard-negative captions (``owner = -1``) have none.

    A caveat on the sphere: for unit ``x`` and an isotropic prior, ``E_r ||x - r||^2 =
    ||x||^2 + E||r||^2`` is a constant, so the expected gradient is zero and the term acts
    only through its per-step noise (``experiments/objectives_gap.py`` sees no change of
    the modality gap). The pull toward the prior's mean that closes the gap needs the
    features before L2 normalisation, which :class:`Features` does not carry.
    """
    li = (image - references).pow(2).sum(dim=1).mean()
    if owner is None:
        lt = (text - references).pow(2).sum(dim=1).mean()
    else:
        keep = owner >= 0
        lt = (text[keep] - references[owner[keep]]).pow(2).sum(dim=1).mean()
    return (li + lt) / 2


class RaFAObjective(StepSeeded):
    """:func:`rafa_loss` with references drawn afresh every optimizer step from ``seed``
    and the step number (so a resumed run draws what an uninterrupted one would). A
    regulariser: CLIP-Refine adds it to a contrastive/distillation loss, e.g.
    ``--loss clip+rafa``."""

    def forward(self, f: Features) -> torch.Tensor:
        refs = random_references(f.batch_size, f.image.shape[1], self.generator())
        return rafa_loss(f.image, f.text, refs.to(f.image), f.owner)


register(
    "rafa",
    LossSpec(
        lambda _, run: RaFAObjective(getattr(run, "seed", 0)),
        summary="pull both modalities to shared random references (add to a loss: clip+rafa)",
        contrastive=False,
    ),
)
