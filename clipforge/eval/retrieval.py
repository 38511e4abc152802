"""Image <-> text retrieval recall@K, with any number of captions per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipforge.eval import shapes_data
from clipforge.eval.datasets import RetrievalData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def recall_at_k(
    scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries (rows of ``scores [Q, G]``) with a positive among the top ``k``.

    ``positives`` is a boolean ``[Q, G]`` relevance matrix, so a query may have several
    correct gallery items (several captions per image, or identical captions); a query
    without any positive never counts as a hit. This is recall@k as CLIP papers and
    CLIP_benchmark count it (1 if any positive is retrieved, else 0), and the top ``k`` is
    taken with ``torch.topk`` as CLIP_benchmark takes it, so tied scores at the k-th place
    resolve the same way and the numbers are equal on the same scores.
    """
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[k] = float(positives.gather(1, top).any(dim=1).float().mean())
    return out


@torch.no_grad()
def retrieval(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positives: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@K in both directions; ``positives[i, j]`` says text ``j`` describes image ``i``.

    ``i2t`` ranks texts for each image query, ``t2i`` ranks images for each text query
    (CLIP_benchmark calls them ``text_retrieval_recall`` and ``image_retrieval_recall``).
    """
    # Scores are laid out [texts, images] as CLIP_benchmark lays them out: topk then sees
    # the same values in the same memory order, and equal scores resolve identically.
    sim = text_features.float() @ image_features.float().T
    out: dict[str, float] = {}
    for k, v in recall_at_k(sim.T, positives, ks).items():
        out[f"i2t_R@{k}"] = v
    for k, v in recall_at_k(sim, positives.T, ks).items():
        out[f"t2i_R@{k}"] = v
    return out


def run(ctx: EvalContext, data: RetrievalData) -> TaskResult:
    """R@1/5/10 both ways on a retrieval set."""
    img = ctx.embedder.images(data.images)
    txt = ctx.embedder.texts(data.texts)
    metrics = retrieval(img, txt, data.positive_matrix())
    details = {"images": len(data.captions), "texts": len(txt)}
    return TaskResult(metrics, details=details)


def _shapes(ctx: EvalContext) -> RetrievalData:
    return shapes_data.retrieval(ctx.image_size, ctx.seed, ctx.scenes, ctx.split)


TASKS.add(
    "retrieval",
    Task(
        "image<->text retrieval, several captions per image: R@1/5/10 both ways",
        ("retrieval",),
        _shapes,
        run,
    ),
)
