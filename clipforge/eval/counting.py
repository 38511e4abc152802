"""Counting (CountBench-style): pick the right number word among two to ten.

Each shapes-world counting scene holds 2..10 identical small objects; its options are
the nine captions "two red circles" ... "ten red circles". Besides accuracy (chance
1/9) the task reports the mean absolute error of the chosen count and per-count accuracy.
"""

from __future__ import annotations

import torch

from clipforge.eval import shapes_data
from clipforge.eval.choice import choice_accuracy, choice_scores
from clipforge.eval.datasets import ChoiceData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def run(ctx: EvalContext, data: ChoiceData) -> TaskResult:
    scores = choice_scores(ctx, data)
    acc = choice_accuracy(scores, data.answer, data.group)
    metrics = {"accuracy": acc.pop("accuracy")}
    # Options are ordered by count, so the index distance is the count error.
    chosen = torch.tensor([int(s.argmax()) for s in scores])
    metrics["mean_abs_error"] = float((chosen - torch.tensor(data.answer)).abs().float().mean())
    details = {"accuracy per count": {g.split("/")[0]: round(v, 4) for g, v in acc.items()}}
    return TaskResult(metrics, details=details)


def _shapes(ctx: EvalContext) -> ChoiceData:
    return shapes_data.counting(ctx.image_size, ctx.seed)


TASKS.add(
    "counting",
    Task("pick the right number word (2..10) for scenes of n objects", ("counting",), _shapes, run),
)
