"""Position-embedding initialisations."""

from __future__ import annotations

import torch


def sincos_2d(grid: int, width: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings ``[grid * grid, width]`` (row-major patch order).

    A quarter of the channels encode each of sin(x), cos(x), sin(y), cos(y) at geometric
    frequencies, so neighbouring patches start with similar embeddings: the transformer
    knows the image's 2-D layout from the first step instead of learning it from data.
    """
    if width % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {width}")
    q = width // 4
    omega = 1.0 / temperature ** (torch.arange(q, dtype=torch.float64) / q)
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    x = xs.flatten()[:, None] * omega[None]
    y = ys.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()
