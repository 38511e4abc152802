"""Zero-shot classification with prompt templates and template ensembling."""

from __future__ import annotations

import torch

from clipforge.eval import shapes_data
from clipforge.eval.datasets import ClassificationData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1, top-5 accuracy and mean per-class recall of ``logits [N, C]``.

    Mean per-class recall averages the recall of the classes present in ``labels``
    (balanced accuracy). ``top5`` is left out with fewer than five classes, where it says
    nothing. Tied logits are resolved exactly as CLIP_benchmark resolves them, so the
    numbers are equal on the same logits: the top-k accuracies take ``torch.topk`` of the
    largest k in use (5, or 1 below five classes) and the per-class recall takes
    ``argmax`` (the first maximal class).
    """
    n, c = logits.shape
    top = logits.topk(5 if c >= 5 else 1, dim=1).indices
    hits = top == labels[:, None]
    # Counts over n in double precision, so 31/90 is the same number everywhere.
    out = {"top1": int(hits[:, 0].sum()) / n}
    if c >= 5:
        out["top5"] = int(hits.any(dim=1).sum()) / n
    pred = logits.argmax(dim=1)
    recalls = [(pred[labels == cls] == cls).double().mean() for cls in labels.unique()]
    out["mean_per_class_recall"] = float(torch.stack(recalls).mean())
    return out


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts: row = true class, column = predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


@torch.no_grad()
def zero_shot(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor,
) -> dict[str, float]:
    """Classify normalised image features by cosine similarity to the class embeddings."""
    logits = image_features.float() @ class_weights.T
    return classification_metrics(logits, labels)


def _shapes(ctx: EvalContext) -> ClassificationData:
    return shapes_data.classification(ctx.image_size, ctx.seed, ctx.split, ctx.per_class)


def run(ctx: EvalContext, data: ClassificationData) -> TaskResult:
    """Zero-shot top-1/top-5/mean per-class recall, and a confusion-matrix plot."""
    from clipforge.eval import plots

    feats = ctx.embedder.images(data.images)
    weights = ctx.embedder.classifier(data.classnames, data.templates)
    logits = feats @ weights.T
    metrics = classification_metrics(logits, data.labels)
    cm = confusion_matrix(logits.argmax(dim=1), data.labels, len(data.classnames))
    drawn = ctx.plot(
        lambda f: plots.confusion(cm, data.classnames, f), "zeroshot-confusion.png",
        "confusion matrix",
    )  # fmt: skip
    recall = cm.diag().float() / cm.sum(dim=1).clamp(min=1)
    worst = recall.argsort()[:5].tolist()
    details = {
        "classes": len(data.classnames),
        "templates": len(data.templates),
        "images": len(data.labels),
        "worst_classes": {data.classnames[i]: round(float(recall[i]), 4) for i in worst},
    }
    return TaskResult(metrics, drawn, details)


TASKS.add(
    "zeroshot",
    Task(
        "zero-shot classification with template ensembling: top-1, top-5, mean per-class recall",
        ("classification",),
        _shapes,
        run,
    ),
)
