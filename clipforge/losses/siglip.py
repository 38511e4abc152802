"""SigLIP's pairwise sigmoid loss (Zhai et al., 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary logistic loss on every image-text pair, normalised by the batch size.

    ``L = -1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b))`` with ``z_ij = 1`` on the
    diagonal and ``-1`` elsewhere. Each pair's term is computed once and no softmax
    couples the rows, which is what lets the distributed version exchange text chunks
    instead of gathering the full matrix.
    """
    if bias is None:
        raise ValueError("siglip_loss needs a logit bias; build the model with one")
    logits = scale * image @ text.T + bias
    n = image.shape[0]
    sign = 2 * torch.eye(n, device=image.device, dtype=logits.dtype) - 1
    per_row = -F.logsigmoid(sign * logits).sum(dim=1)
    if weights is None:
        return per_row.sum() / n
    return (per_row * weights).sum() / weights.sum()
