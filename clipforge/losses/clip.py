"""CLIP's symmetric InfoNCE (Radford et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the ``B x B`` similarity matrix.

    ``L = 1/2 [ CE(s * I T^T, diag) + CE(s * T I^T, diag) ]`` with ``s = exp(t)`` the
    learnable inverse temperature (clamped at 100 by the model). ``image`` and ``text``
    are L2-normalised ``[B, D]``; row ``i`` of each is a positive pair. ``weights`` (``[B]``)
    optionally weights each sample's two terms (mean-normalised).
    """
    logits = scale * image @ text.T
    if bias is not None:
        logits = logits + bias
    target = torch.arange(image.shape[0], device=image.device)
    li = F.cross_entropy(logits, target, reduction="none")
    lt = F.cross_entropy(logits.T, target, reduction="none")
    per_sample = (li + lt) / 2
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum()
