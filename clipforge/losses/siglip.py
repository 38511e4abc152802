"""SigLIP's pairwise sigmoid loss (Zhai et al., 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.losses.base import Features, Objective, weighted_mean


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary logistic loss on every image-text pair, normalised by the number of images.

    ``L = -1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b))`` with ``z_ij = 1`` where text
    ``j`` belongs to image ``i`` (the diagonal when ``owner`` is None) and ``-1``
    elsewhere; hard-negative captions (``owner = -1``) are negative for every image. No
    softmax couples the rows, which is what lets the distributed version exchange text
    chunks instead of gathering the full matrix. ``weights`` ``[B]`` weight the rows.
    """
    if bias is None:
        raise ValueError("siglip_loss needs a logit bias; build the model with one")
    logits = scale * image @ text.T + bias
    b = image.shape[0]
    if owner is None:
        sign = 2 * torch.eye(b, text.shape[0], device=image.device, dtype=logits.dtype) - 1
    else:
        rows = torch.arange(b, device=image.device)
        sign = 2 * (owner[None, :] == rows[:, None]).to(logits.dtype) - 1
    per_row = -F.logsigmoid(sign * logits).sum(dim=1)
    return per_row.mean() if weights is None else weighted_mean(per_row, weights)


class SiglipObjective(Objective):
    """:func:`siglip_loss` as an objective."""

    def forward(self, f: Features) -> torch.Tensor:
        return siglip_loss(f.image, f.text, f.scale, f.bias, f.weights, f.owner)
