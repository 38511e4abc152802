"""SigLIP 2 (NaFlex) vision embeddings as SigLIP's, for one square input size.

``transformers.Siglip2VisionEmbeddings`` embeds each patch, flattened as (row, column,
channel) by ``Siglip2ImageProcessor``'s ``convert_image_to_patches``, with an
``nn.Linear``, and resizes its square grid of learned positions to each image's patch
grid with the weights of ``F.interpolate(mode="bilinear", align_corners=False,
antialias=True)`` (it computes them in float32; older versions called ``F.interpolate``
itself). For square images of one size the mask over padding patches is empty, so the
vision tower is SigLIP's: a patch convolution and a position table of the model's grid.
These two functions make those tensors from SigLIP 2's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError


def linear_to_conv(weight: torch.Tensor, patch: int, where: str = "checkpoint") -> torch.Tensor:
    """The patch-embedding ``nn.Linear`` weight ``[width, patch * patch * 3]`` (inputs in
    (row, column, channel) order) as an ``nn.Conv2d`` weight ``[width, 3, patch, patch]``:
    the convolution of a patch then computes the same sum over the same products."""
    if weight.ndim != 2 or weight.shape[1] != patch * patch * 3:
        raise ClipforgeError(
            f"{where}: SigLIP 2 patch embedding {list(weight.shape)} does not take "
            f"{patch} x {patch} x 3 patches"
        )
    return weight.reshape(weight.shape[0], patch, patch, 3).permute(0, 3, 1, 2)


def resize_positions(pos: torch.Tensor, grid: int, where: str = "checkpoint") -> torch.Tensor:
    """The learned positions ``[n, width]`` (a square grid, row-major) resized to a
    ``grid x grid`` patch grid, as transformers resizes them for such an image: bilinear,
    ``align_corners=False``, antialiased (which only matters when shrinking). Computed in
    float64 and rounded once; at the source size the table is returned unchanged (the
    resize weights are then one-hot, so transformers uses it unchanged too)."""
    side = math.isqrt(pos.shape[0])
    if pos.ndim != 2 or side * side != pos.shape[0]:
        raise ClipforgeError(
            f"{where}: {pos.shape[0]} SigLIP 2 positions do not form a square grid"
        )
    if side == grid:
        return pos
    width = pos.shape[1]
    square = pos.double().reshape(side, side, width).permute(2, 0, 1)[None]
    resized = F.interpolate(
        square, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].reshape(width, grid * grid).T.to(pos.dtype)
