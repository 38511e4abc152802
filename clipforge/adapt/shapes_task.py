"""The shapes world's novel-class adaptation task, written as image folders.

Classes are the held-out (shape, colour) pairs of :func:`clipforge.eval.shapes_data.ood_classes`:
a held-out shape (hexagon, diamond) in known colours, known shapes in held-out colours
(pink, brown, grey), and both held out. A model trained on the shapes world has never
seen any of them. ``train/`` draws from the world's train split and ``test/`` from its
test split, so no image is in both. Each split's ``captions.jsonl`` holds every image's
canonical world caption ("a large pink circle"), the captions ``caps`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipforge.data.shapes import ShapesWorld
from clipforge.eval.shapes_data import ood_classes


def write_novel_classes(
    root: str | Path, size: int, train_per_class: int = 32, test_per_class: int = 25,
    seed: int = 0, classes: list[tuple[str, str]] | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``root/train/<colour>_<shape>/*.png`` and ``root/test/...``; return both."""
    root = Path(root)
    classes = classes or ood_classes()
    out = []
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        world = ShapesWorld(size, split=split, seed=seed)
        lines = []
        for ci, (shape, colour) in enumerate(classes):
            d = root / split / f"{colour}_{shape}"
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per):
                sample = world.object_sample(ci * per + j, shape, colour)
                sample.image.save(d / f"{j:04d}.png")
                lines.append(json.dumps({"image": f"{d.name}/{j:04d}.png",
                                         "caption": sample.texts[0]}))  # fmt: skip
        (root / split / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.append(root / split)
    return out[0], out[1]
