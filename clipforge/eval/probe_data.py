"""Train/validation/test splits of image features, for tasks that fit on frozen features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.errors import ClipforgeError
from clipforge.eval import shapes_data
from clipforge.eval.datasets import ClassificationData
from clipforge.eval.tasks import EvalContext


@dataclass
class ProbeSplits:
    """Three classification sets over the same classes (the shapes world has real splits)."""

    train: ClassificationData
    val: ClassificationData
    test: ClassificationData


@dataclass
class Features:
    x: torch.Tensor  # [N, D] normalised image features
    y: torch.Tensor  # [N] labels


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, float] = (0.6, 0.2), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors (train, val, test) splitting every class by ``fractions`` (the rest is
    test); each class keeps at least one image in every part, so needs three or more."""
    g = torch.Generator().manual_seed(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < 3:
            raise ClipforgeError(f"class {int(c)} has {len(idx)} images; a probe needs >= 3")
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_tr = max(1, int(round(fractions[0] * len(idx))))
        n_va = max(1, int(round(fractions[1] * len(idx))))
        n_tr = min(n_tr, len(idx) - 2)
        parts[0].append(idx[:n_tr])
        parts[1].append(idx[n_tr : n_tr + n_va])
        parts[2].append(idx[n_tr + n_va :])
    return tuple(torch.cat(p).sort().values for p in parts)  # type: ignore[return-value]


def split_features(
    ctx: EvalContext, data: ProbeSplits | ClassificationData
) -> tuple[Features, Features, Features]:
    """Image features of the three parts; a single set is split 60/20/20 per class."""
    if isinstance(data, ProbeSplits):
        return tuple(  # type: ignore[return-value]
            Features(ctx.embedder.images(d.images), d.labels)
            for d in (data.train, data.val, data.test)
        )
    x = ctx.embedder.images(data.images)
    return tuple(  # type: ignore[return-value]
        Features(x[i], data.labels[i]) for i in stratified_split(data.labels, seed=ctx.seed)
    )


def shapes_splits(ctx: EvalContext) -> ProbeSplits:
    s, seed = ctx.image_size, ctx.seed
    return ProbeSplits(
        shapes_data.classification(s, seed, "train"),
        shapes_data.classification(s, seed, "val"),
        shapes_data.classification(s, seed, "test"),
    )
