"""Where a run's zero-shot errors go: colour, or which shapes are confused.

    PYTHONPATH=. python experiments/zeroshot_errors.py RUN_DIR [RUN_DIR ...]

Classifies the 1,000 single-object test images of the shapes world (25 per colour x
shape class, the evaluator's zero-shot task) with the run's final model and counts its
errors by kind:

``colour``         the predicted class names another colour
``circle/square``  the right colour, circle and square confused (either way)
``star/triangle``  the right colour, star and triangle confused (either way)
``other shape``    the right colour, any other pair of shapes

Top-1 is the evaluator's ``zeroshot/top1`` of the same model: the images, templates and
classifier are the evaluator's own (:class:`clipforge.eval.embed.Embedder`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from clipforge.eval import shapes_data
from clipforge.eval.embed import Embedder
from clipforge.models import load, tokenizer_for

ERROR_KINDS = ("colour", "circle/square", "star/triangle", "other shape")
CONFUSABLE = {frozenset(("circle", "square")): "circle/square",
              frozenset(("star", "triangle")): "star/triangle"}  # fmt: skip


def error_kind(true: str, predicted: str) -> str | None:
    """The kind of error of predicting class ``predicted`` ("red square") for an image
    of ``true`` ("red circle"), or None when they are the same class."""
    if true == predicted:
        return None
    (c_true, s_true), (c_pred, s_pred) = true.split(), predicted.split()
    if c_true != c_pred:
        return "colour"
    return CONFUSABLE.get(frozenset((s_true, s_pred)), "other shape")


@torch.no_grad()
def errors(run: str | Path, per_class: int = 25) -> tuple[float, Counter]:
    """Zero-shot top-1 of ``run`` and its errors counted by :data:`ERROR_KINDS`."""
    model = load(run).eval()
    embedder = Embedder(model, tokenizer_for(model), progress=False)
    data = shapes_data.classification(model.cfg.vision.image_size, 0, "test", per_class)
    logits = embedder.images(data.images) @ embedder.classifier(data.classnames, data.templates).T
    names = data.classnames
    kinds = Counter(
        error_kind(names[t], names[p])
        for t, p in zip(data.labels.tolist(), logits.argmax(1).tolist(), strict=True)
    )
    right = kinds.pop(None, 0)
    return right / len(data.labels), kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for run in a.runs:
        top1, kinds = errors(run)
        counts = " ".join(f"{k}={kinds.get(k, 0)}" for k in ERROR_KINDS)
        print(f"{Path(run).name} top1={top1:.3f} {counts}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
