"""RoI pooling of image tokens over the patch grid: one feature per box."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_weights(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """``[..., side * side]``: the share of each grid cell a box covers (row-major cells).

    ``boxes`` ``[..., 4]`` are ``(x0, y0, x1, y1)`` as fractions of the image side; cell
    ``(r, c)`` spans ``[c, c + 1] / side`` across and ``[r, r + 1] / side`` down. A
    weight is the covered area over the cell's area, in ``[0, 1]``.
    """
    edges = torch.arange(side + 1, dtype=boxes.dtype, device=boxes.device) / side
    lo, hi = edges[:-1], edges[1:]

    def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # [..., side]: the length of [a, b] inside each cell, over the cell's length.
        return (torch.minimum(b[..., None], hi) - torch.maximum(a[..., None], lo)).clamp(
            min=0
        ) * side

    wx = overlap(boxes[..., 0], boxes[..., 2])
    wy = overlap(boxes[..., 1], boxes[..., 3])
    return (wy[..., :, None] * wx[..., None, :]).flatten(-2)


def roi_pool(tokens: torch.Tensor, boxes: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``[B, K, D]``: the mean of the patch tokens ``[B, N, D]`` (``N = side^2``, row-major)
    inside each of the ``[B, K, 4]`` boxes, each token weighted by the share of its cell
    the box covers (an area-exact RoI average), L2-normalised unless ``normalize`` is off.
    A box that covers no cell pools to zero."""
    n = tokens.shape[1]
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"{n} image tokens are not a square grid")
    w = cell_weights(boxes.to(tokens.dtype), side)  # [B, K, N]
    pooled = torch.einsum("bkn,bnd->bkd", w, tokens) / w.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    return F.normalize(pooled, dim=-1) if normalize else pooled


__all__ = ["cell_weights", "roi_pool"]
