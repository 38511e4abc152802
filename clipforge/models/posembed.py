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


def rope_tables(
    length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` ``[length, head_dim / 2]`` of rotary position embeddings (Su et
    al., RoFormer): channel pair ``i`` of position ``m`` turns by ``m base^(-2i/d)``."""
    half = head_dim // 2
    inv = base ** -(torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    # In float64, then rounded once: long contexts keep their angles exact.
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs ``(j, j + d/2)`` of ``x`` ``[..., T, d]`` by position.

    A rotation keeps lengths, and the dot product of a query rotated to position ``m``
    with a key rotated to ``n`` depends on ``m - n`` only: attention sees relative
    positions, and no table bounds the context.
    """
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
