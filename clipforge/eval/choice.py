"""Caption selection: for each image, which of several candidate captions scores highest."""

from __future__ import annotations

import torch

from clipforge.eval.datasets import ChoiceData
from clipforge.eval.tasks import EvalContext


def choice_scores(ctx: EvalContext, data: ChoiceData) -> list[torch.Tensor]:
    """Per row, the cosine similarity of the image to each option (options may differ in
    number between rows)."""
    img = ctx.embedder.images(data.images)
    flat = [t for opts in data.options for t in opts]
    txt = ctx.embedder.texts(flat)
    out, start = [], 0
    for i, opts in zip(data.image_index, data.options, strict=True):
        out.append(txt[start : start + len(opts)] @ img[i])
        start += len(opts)
    return out


def choice_accuracy(
    scores: list[torch.Tensor], answers: list[int], groups: list[str]
) -> dict[str, float]:
    """Overall accuracy, and per group when there are groups.

    A row is right only when the answer scores strictly higher than every other option:
    a tie (e.g. a text encoder that truncates the words that differ) is not a win.
    """
    right = []
    for s, a in zip(scores, answers, strict=True):
        others = torch.cat([s[:a], s[a + 1 :]])
        right.append(bool(len(others) == 0 or s[a] > others.max()))
    r = torch.tensor(right, dtype=torch.float)
    out = {"accuracy": float(r.mean())}
    if groups:
        for g in dict.fromkeys(groups):
            m = torch.tensor([x == g for x in groups])
            out[f"{g}/accuracy"] = float(r[m].mean())
    return out
