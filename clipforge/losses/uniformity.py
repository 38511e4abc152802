"""The uniformity term of Wang & Isola (2020), "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere"."""

from __future__ import annotations

import math

import torch

from clipforge.losses.base import Features, Objective
from clipforge.losses.registry import LossSpec, register


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over the distinct pairs of rows of ``x``.

    The log of a Gaussian-potential energy: lowest when the points spread evenly over the
    sphere. For unit vectors ``||x_i - x_j||^2 = 2 - 2 x_i.x_j``, which avoids the
    square root (and its infinite gradient at 0) of a pairwise-distance routine.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = (2 - 2 * x @ x.T).clamp(min=0)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    d = sq[i, j]
    return torch.logsumexp(-t * d, dim=0) - math.log(d.numel())


def uniformity_loss(
    image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor | None = None
) -> torch.Tensor:
    """``(uniformity(images) + uniformity(captions)) / 2``, each within one modality.

    Hard-negative captions (``owner = -1``) are left out: they are near-copies of a
    caption by construction and would count as clumping the data does not have.
    """
    captions = text if owner is None else text[owner >= 0]
    return (uniformity(image) + uniformity(captions)) / 2


class UniformityObjective(Objective):
    """:func:`uniformity_loss`: a regulariser to add to a contrastive loss, e.g.
    ``--loss clip+0.1*uniformity``."""

    def forward(self, f: Features) -> torch.Tensor:
        return uniformity_loss(f.image, f.text, f.owner)


register(
    "uniformity",
    LossSpec(
        lambda _, run: UniformityObjective(),
        summary="log mean exp(-2 d^2) within each modality (add to a loss: clip+0.1*uniformity)",
        contrastive=False,
    ),
)
