"""Compositional hard negatives: the true caption against minimally changed ones.

On the shapes world each test scene's canonical caption competes with one negative per
perturbation that applies (attribute swap, relation swap, count swap, shape swap; see
:mod:`clipforge.data.shapes.hardneg`, shared with hard-negative training). Real benchmarks in
SugarCrepe's or ARO's public JSON format are read by
:func:`clipforge.eval.datasets.hardneg_json`; each file there is one perturbation type.
Accuracy is the fraction of rows whose true caption beats its negatives; chance is 50%.
"""

from __future__ import annotations

import random

from clipforge.data.shapes.hardneg import PERTURBATIONS, perturb, positive_caption
from clipforge.eval import shapes_data
from clipforge.eval.choice import choice_accuracy, choice_scores
from clipforge.eval.datasets import ChoiceData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def shapes_hardneg(size: int, seed: int = 0, n: int | None = None) -> ChoiceData:
    """One row per (test scene, applicable perturbation), on the retrieval scenes."""
    world, images = shapes_data.scenes(size, seed, n or shapes_data.SCENES)
    rows, options, groups = [], [], []
    for i in range(len(images)):
        meta = world.scene(i).meta()
        pos = positive_caption(meta)
        for kind in PERTURBATIONS:
            # Seeded per (scene, kind) so adding a kind never changes another's negatives.
            neg = perturb(meta, kind, random.Random(f"{seed}/{i}/{kind}"))
            if neg is not None:
                rows.append(i)
                options.append([pos, neg])
                groups.append(kind)
    return ChoiceData("shapes-test-hardneg", images, rows, options, [0] * len(rows), groups)


def run(ctx: EvalContext, data: ChoiceData) -> TaskResult:
    metrics = choice_accuracy(choice_scores(ctx, data), data.answer, data.group)
    counts = {g: data.group.count(g) for g in dict.fromkeys(data.group)}
    return TaskResult(metrics, details={"rows per type": counts})


TASKS.add(
    "compositional",
    Task(
        "true caption vs attribute/relation/count/shape-swapped negatives (SugarCrepe/ARO JSON)",
        ("choice",),
        lambda ctx: shapes_hardneg(ctx.image_size, ctx.seed),
        run,
    ),
)
