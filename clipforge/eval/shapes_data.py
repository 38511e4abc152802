"""The shapes-world data set of every evaluation task (the default when no data is named).

Every set is a pure function of (image size, seed, split, sizes), and its ImageSet key
says so, which is what lets the embedding cache share images between tasks: zero-shot,
calibration and the in-distribution half of OOD use the same classification images;
retrieval, compositional and long-caption retrieval use the same scenes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import torch
from PIL import Image

from clipforge.data.shapes import (
    COLOURS,
    OOD_COLOURS,
    OOD_SHAPES,
    SHAPES,
    ShapesWorld,
    captions_for,
    count_caption,
    long_caption,
)
from clipforge.eval.datasets import ChoiceData, ClassificationData, ImageSet, RetrievalData


def _a(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


# Zero-shot prompt templates: the class name is "<colour> <shape>".
TEMPLATES: list[Callable[[str], str]] = [
    lambda c: _a(f"a {c}"),
    lambda c: _a(f"a photo of a {c}"),
    lambda c: f"one {c}",
    lambda c: _a(f"there is a {c}"),
    lambda c: _a(f"a picture of a {c}"),
]

# Default sizes: large enough for stable numbers, small enough that ``--tasks all`` on the
# tiny preset stays well under three minutes on two CPU cores.
PER_CLASS = {"train": 10, "val": 5, "test": 25}
SCENES = 1000
COUNT_PER_N = 30
OOD_PER_CLASS = 12


def _object_loader(
    world: ShapesWorld, classes: list[tuple[str, str]], per: int, i: int
) -> Image.Image:
    shape, colour = classes[i // per]
    return world.object_sample(i, shape, colour).image


def classes() -> list[tuple[str, str]]:
    """The (shape, colour) classes of the benchmark, in label order."""
    return [(s, c) for c in COLOURS for s in SHAPES]


def classification(
    size: int, seed: int = 0, split: str = "test", per_class: int | None = None
) -> ClassificationData:
    """``per_class`` single-object images of every colour x shape class of ``split``."""
    per = per_class or PER_CLASS[split]
    cls = classes()
    world = ShapesWorld(size, split=split, seed=seed)
    images = ImageSet(
        f"shapes:objects:{size}:{seed}:{split}:{per}",
        len(cls) * per,
        partial(_object_loader, world, cls, per),
    )
    labels = torch.arange(len(cls)).repeat_interleave(per)
    return ClassificationData(
        f"shapes-{split}", images, labels, [f"{c} {s}" for s, c in cls], TEMPLATES
    )


def _scene_loader(world: ShapesWorld, i: int) -> Image.Image:
    return world.sample(i).image


def scenes(
    size: int, seed: int = 0, n: int | None = None, split: str = "test"
) -> tuple[ShapesWorld, ImageSet]:
    n = n or SCENES
    world = ShapesWorld(size, split=split, seed=seed)
    return world, ImageSet(
        f"shapes:scenes:{size}:{seed}:{split}:{n}", n, partial(_scene_loader, world)
    )


def retrieval(size: int, seed: int = 0, n: int | None = None, split: str = "test") -> RetrievalData:
    """``n`` scenes of ``split`` with all their captions (4-6 each).

    A caption counts as right for every image that has the same caption text: the shapes
    world repeats short captions ("a red circle"), and two images both described by it are
    equally right answers.
    """
    world, images = scenes(size, seed, n, split)
    n = len(images)
    captions = [captions_for(world.scene(i)) for i in range(n)]
    texts = [t for c in captions for t in c]
    by_text: dict[str, list[int]] = {}
    for j, t in enumerate(texts):
        by_text.setdefault(t, []).append(j)
    pos = torch.zeros(n, len(texts), dtype=torch.bool)
    for i, c in enumerate(captions):
        for t in c:
            pos[i, by_text[t]] = True
    return RetrievalData(f"shapes-{split}", images, captions, pos)


def long_captions(size: int, seed: int = 0, n: int | None = None) -> RetrievalData:
    """The retrieval scenes, each with one multi-sentence caption."""
    world, images = scenes(size, seed, n)
    captions = [[long_caption(world.scene(i), size)] for i in range(len(images))]
    return RetrievalData("shapes-test-long", images, captions)


def _count_loader(world: ShapesWorld, rows: list[tuple[int, str, str]], i: int) -> Image.Image:
    n, shape, colour = rows[i]
    sc = world.count_scene(i, n, shape, colour)
    return world.render(sc, world.rng(i, stream=5))


def counting(size: int, seed: int = 0, per_n: int | None = None) -> ChoiceData:
    """Scenes of 2..10 identical small objects; the options are the nine number captions."""
    per_n = per_n or COUNT_PER_N
    world = ShapesWorld(size, split="test", seed=seed)
    cls = classes()
    rows = []
    for n in range(2, 11):
        for j in range(per_n):
            shape, colour = cls[(j * 7 + n) % len(cls)]
            rows.append((n, shape, colour))
    images = ImageSet(
        f"shapes:count:{size}:{seed}:{per_n}", len(rows), partial(_count_loader, world, rows)
    )
    options = [[count_caption(k, s, c) for k in range(2, 11)] for _, s, c in rows]
    return ChoiceData(
        "shapes-count",
        images,
        list(range(len(rows))),
        options,
        [n - 2 for n, _, _ in rows],
        [str(n) for n, _, _ in rows],
    )


def ood_classes() -> list[tuple[str, str]]:
    """Held-out (shape, colour) pairs: a novel shape in a known colour, a known shape in a
    novel colour, or both novel."""
    known_c, known_s = list(COLOURS), list(SHAPES)
    out = [(s, c) for s in OOD_SHAPES for c in known_c[::2]]
    out += [(s, c) for c in OOD_COLOURS for s in known_s]
    out += [(s, c) for s in OOD_SHAPES for c in OOD_COLOURS]
    return out


def ood(size: int, seed: int = 0, per_class: int | None = None) -> ImageSet:
    """Images of held-out shapes and colours (out of distribution for the 40 classes)."""
    per_class = per_class or OOD_PER_CLASS
    world = ShapesWorld(size, split="test", seed=seed)
    cls = ood_classes()
    return ImageSet(
        f"shapes:ood:{size}:{seed}:{per_class}",
        len(cls) * per_class,
        partial(_object_loader, world, cls, per_class),
    )
