"""SigLIP's pairwise sigmoid loss (Zhai et al., 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.losses.base import Features, Objective, weighted_mean
from clipforge.losses.registry import LossSpec, register


def siglip_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positive: torch.Tensor,
) -> torch.Tensor:
    """``[b]``: each image row's sum over texts of ``-log sigmoid(z_ij (s x_i.y_j + b))``.

    ``positive`` ``[b, T]`` is true where ``z_ij = 1``. The sum over any split of the
    text columns is the sum of the parts: the chunked exchange relies on it.
    """
    logits = scale * image @ text.T + bias
    sign = 2 * positive.to(logits.dtype) - 1
    return -F.logsigmoid(sign * logits).sum(dim=1)


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """Binary logistic loss on every image-text pair, normalised by the number of images.

    ``L = -1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b))`` with ``z_ij = 1`` where text
    ``j`` belongs to image ``i`` (the diagonal when ``owner`` is None) and ``-1``
    elsewhere; hard-negative captions (``owner = -1``) are negative for every image. No
    softmax couples the rows, which is what lets the distributed version exchange text
    chunks instead of gathering the full matrix. ``weights`` ``[B]`` weight the rows.
    ``rows`` keeps only those image rows' terms, still divided by the whole batch's
    normaliser (a process's share under ``--local-loss``).
    """
    if bias is None:
        raise ValueError("siglip_loss needs a logit bias; build the model with one")
    b = image.shape[0]
    start, stop, _ = (rows or slice(0, b)).indices(b)
    if owner is None:
        owner = torch.arange(text.shape[0], device=image.device)
    own = torch.arange(start, stop, device=image.device)
    per_row = siglip_terms(image[start:stop], text, scale, bias, owner[None, :] == own[:, None])
    if rows is None:
        return per_row.mean() if weights is None else weighted_mean(per_row, weights)
    if weights is None:
        return per_row.sum() / b
    return (per_row * weights[start:stop]).sum() / weights.sum()


class SiglipObjective(Objective):
    """:func:`siglip_loss` as an objective."""

    computes_shares = True
    ring_chunkable = True

    def forward(self, f: Features) -> torch.Tensor:
        return siglip_loss(f.image, f.text, f.scale, f.bias, f.weights, f.owner, f.rows)


# SigLIP starts at t' = log 10 and b = -10 so the many negatives do not dominate early.
register(
    "siglip",
    LossSpec(lambda _, run: SiglipObjective(), math.log(10.0), -10.0, "pairwise sigmoid (SigLIP)"),
)
