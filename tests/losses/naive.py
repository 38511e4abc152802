"""Plain-Python helpers for checking losses against loops on tiny inputs."""

import math

import torch
import torch.nn.functional as F


def emb(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def lse(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]
