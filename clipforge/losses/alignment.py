"""The alignment term of Wang & Isola (2020), "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere"."""

from __future__ import annotations

import torch

from clipforge.losses.base import Features, Objective
from clipforge.losses.registry import LossSpec, register


def alignment_loss(
    image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared distance of the positive pairs: ``1/|P| sum_{(i,j) in P} ||x_i - y_j||^2``.

    On the unit sphere this is ``2 - 2 cos``: it pulls each caption onto its image and so
    closes the modality gap that InfoNCE leaves open. ``owner`` maps texts to images
    (hard negatives, ``-1``, are no pair of anything).
    """
    if owner is None:
        return (image - text).pow(2).sum(dim=1).mean()
    keep = owner >= 0
    return (image[owner[keep]] - text[keep]).pow(2).sum(dim=1).mean()


class AlignmentObjective(Objective):
    """:func:`alignment_loss`: a regulariser to add to a contrastive loss, e.g.
    ``--loss clip+0.1*alignment``; alone it collapses every embedding to one point."""

    def forward(self, f: Features) -> torch.Tensor:
        return alignment_loss(f.image, f.text, f.owner)


register(
    "alignment",
    LossSpec(
        lambda _, run: AlignmentObjective(),
        summary="mean squared distance of positive pairs (add to a loss: clip+0.1*alignment)",
        contrastive=False,
    ),
)
