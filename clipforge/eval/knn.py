"""Few-shot and k-nearest-neighbour classification on frozen image features."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipforge.eval.datasets import ClassificationData
from clipforge.eval.probe_data import Features, ProbeSplits, shapes_splits, split_features
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def knn_predict(train: Features, query: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """Majority vote of the ``k`` most cosine-similar training images, each vote weighted by
    its similarity, which also settles ties between equally frequent classes."""
    sim = query @ train.x.T
    k = min(k, len(train.y))
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(query), num_classes)
    votes.scatter_add_(1, train.y[top_idx], top_sim)
    return votes.argmax(dim=1)


def prototype_predict(support: Features, query: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Nearest class mean (normalised) by cosine similarity: the few-shot baseline."""
    protos = torch.zeros(num_classes, support.x.shape[1])
    protos.index_add_(0, support.y, support.x)
    protos = torch.nn.functional.normalize(protos, dim=-1)
    sim = query @ protos.T
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[support.y] = True
    return sim.masked_fill(~present, -float("inf")).argmax(dim=1)


def sample_shots(train: Features, shots: int, generator: torch.Generator) -> Features:
    """``shots`` random training images per class (fewer when a class has fewer)."""
    idx = []
    for c in train.y.unique():
        pool = (train.y == c).nonzero().flatten()
        idx.append(pool[torch.randperm(len(pool), generator=generator)[:shots]])
    i = torch.cat(idx)
    return Features(train.x[i], train.y[i])


def few_shot(
    train: Features,
    test: Features,
    shots: Sequence[int] = (1, 5),
    ks: Sequence[int] = (1, 5),
    episodes: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    out = {}
    for k in ks:
        pred = knn_predict(train, test.x, k, num_classes)
        out[f"knn{k}_top1"] = float((pred == test.y).float().mean())
    g = torch.Generator().manual_seed(seed)
    for s in shots:
        accs = []
        for _ in range(episodes):
            pred = prototype_predict(sample_shots(train, s, g), test.x, num_classes)
            accs.append(float((pred == test.y).float().mean()))
        out[f"{s}shot_top1"] = sum(accs) / len(accs)
    return out


def run(ctx: EvalContext, data: ProbeSplits | ClassificationData) -> TaskResult:
    train, val, test = split_features(ctx, data)
    # Neither method has anything to tune, so the validation part joins the training pool.
    pool = Features(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]))
    metrics = few_shot(pool, test, seed=ctx.seed)
    return TaskResult(metrics, details={"episodes per shot count": 5, "pool images": len(pool.y)})


TASKS.add(
    "knn",
    Task(
        "k-NN (k=1, 5) and n-shot prototype (n=1, 5) classification on image features",
        ("classification",),
        shapes_splits,
        run,
    ),
)
