"""Calibration of zero-shot predictions: expected calibration error and reliability diagram.

Probabilities are the model's own: ``softmax(logit_scale * cos(image, class embeddings))``,
the distribution it was trained to produce. ECE (Guo et al., 2017) bins the top-1
confidence into equal-width bins ``(lo, hi]`` and averages ``|accuracy - confidence|``
over bins, weighted by the fraction of images in each.
"""

from __future__ import annotations

import torch

from clipforge.eval import shapes_data
from clipforge.eval.datasets import ClassificationData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bin: mean confidence, accuracy and count (empty bins give zeros)."""
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins bin 0.
    idx = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.double).index_add_(0, idx, confidence.double())
    acc_sum = torch.zeros(bins, dtype=torch.double).index_add_(0, idx, correct.double())
    safe = counts.clamp(min=1)
    return conf_sum / safe, acc_sum / safe, counts


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> float:
    conf, acc, counts = reliability_bins(confidence, correct, bins)
    return float(((acc - conf).abs() * counts).sum() / counts.sum())


def run(ctx: EvalContext, data: ClassificationData) -> TaskResult:
    from clipforge.eval import plots

    w = ctx.embedder.classifier(data.classnames, data.templates)
    logits = ctx.logit_scale * (ctx.embedder.images(data.images) @ w.T)
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    correct = (pred == data.labels).float()
    ece = expected_calibration_error(confidence, correct)
    conf, acc, counts = reliability_bins(confidence, correct)
    drawn = ctx.plot(
        lambda f: plots.reliability(conf, acc, counts, ece, f), "calibration-reliability.png",
        "reliability diagram",
    )  # fmt: skip
    nll = float(torch.nn.functional.cross_entropy(logits, data.labels))
    metrics = {
        "ece": ece,
        "accuracy": int(correct.sum()) / len(correct),
        "mean_confidence": float(confidence.mean()),
        "nll": nll,
    }
    return TaskResult(metrics, drawn, {"logit scale": ctx.logit_scale})


def _shapes(ctx: EvalContext) -> ClassificationData:
    return shapes_data.classification(ctx.image_size, ctx.seed)


TASKS.add(
    "calibration",
    Task(
        "expected calibration error (15 bins) of zero-shot predictions, reliability diagram",
        ("classification",),
        _shapes,
        run,
    ),
)
