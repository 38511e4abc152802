"""Image <-> text retrieval recall@K."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def recall_at_k(
    scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries (rows of ``scores [Q, G]``) with a positive among the top ``k``.

    ``positives`` is a boolean ``[Q, G]`` relevance matrix, so a query may have several
    correct gallery items (several captions per image, or identical captions).
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    hits = positives.gather(1, order)
    first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), scores.shape[1])
    return {k: float((first < k).float().mean()) for k in ks}


@torch.no_grad()
def retrieval(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positives: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@K in both directions; ``positives[i, j]`` says text ``j`` describes image ``i``."""
    sim = image_features.float() @ text_features.float().T
    out: dict[str, float] = {}
    for k, v in recall_at_k(sim, positives, ks).items():
        out[f"i2t_R@{k}"] = v
    for k, v in recall_at_k(sim.T, positives.T, ks).items():
        out[f"t2i_R@{k}"] = v
    return out
