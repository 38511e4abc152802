"""Linear probe: logistic regression on frozen image features.

The inverse regularisation strength ``C`` is chosen on the validation part from a log
grid; the chosen model is refit on train + validation and scored once on test.
scikit-learn's L-BFGS multinomial logistic regression is the solver: deterministic,
well tested, and fast at these sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipforge.eval.datasets import ClassificationData
from clipforge.eval.probe_data import Features, ProbeSplits, shapes_splits, split_features
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult
from clipforge.eval.zeroshot import classification_metrics

C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float):
    """L-BFGS multinomial logistic regression with inverse regularisation ``c`` (the
    probe's solver; ``clipforge.adapt``'s ``linear_probe`` fits with it too)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000).fit(x, y)


def _logits(model, x: np.ndarray, num_classes: int) -> torch.Tensor:
    # A class missing from the training labels gets no column from sklearn; give it -inf.
    out = torch.full((len(x), num_classes), -float("inf"))
    out[:, torch.as_tensor(model.classes_)] = torch.as_tensor(
        model.decision_function(x), dtype=torch.float32
    ).view(len(x), -1)
    return out


def linear_probe(
    train: Features, val: Features, test: Features, grid: Sequence[float] = C_GRID
) -> tuple[dict[str, float], float, dict[float, float]]:
    """Test metrics, the chosen ``C`` and validation accuracy per ``C``."""
    num_classes = int(max(train.y.max(), val.y.max(), test.y.max())) + 1
    xtr, ytr = train.x.numpy(), train.y.numpy()
    val_acc = {}
    for c in grid:
        pred = _logits(fit_logistic(xtr, ytr, c), val.x.numpy(), num_classes).argmax(dim=1)
        val_acc[c] = float((pred == val.y).float().mean())
    # Ties go to the strongest regularisation (first in the grid): the simpler model.
    best = max(grid, key=lambda c: (val_acc[c], -grid.index(c)))
    xall = np.concatenate([xtr, val.x.numpy()])
    yall = np.concatenate([ytr, val.y.numpy()])
    logits = _logits(fit_logistic(xall, yall, best), test.x.numpy(), num_classes)
    return classification_metrics(logits, test.y), best, val_acc


def run(ctx: EvalContext, data: ProbeSplits | ClassificationData) -> TaskResult:
    train, val, test = split_features(ctx, data)
    metrics, best, val_acc = linear_probe(train, val, test)
    details = {
        "C": best,
        "val_top1_per_C": {str(c): round(a, 4) for c, a in val_acc.items()},
        "train/val/test images": [len(train.y), len(val.y), len(test.y)],
    }
    return TaskResult(metrics, details=details)


TASKS.add(
    "linear_probe",
    Task(
        "logistic-regression probe on frozen image features, C chosen on a validation split",
        ("classification",),
        shapes_splits,
        run,
    ),
)
