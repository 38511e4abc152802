"""Region retrieval: match object boxes of held-out scenes with their phrases.

Every object of a shapes-world scene has a known box and phrase ("a red circle"). A box
is embedded by RoI-pooling the image tower's patch tokens inside it
(:func:`~clipforge.models.regions.roi_pool`, as ``--loss clip+region`` trains), a phrase
by the text tower. Two recalls at 1:

* ``box_to_phrase_R@1``: each box against every distinct phrase of the set (chance
  ``1 / phrases``, reported as ``box_to_phrase_chance``);
* ``phrase_to_box_R@1``: each phrase of a scene with two or more objects against the
  boxes of that scene: grounding (chance ``mean 1 / objects``, ``phrase_to_box_chance``).
  Scenes whose objects share a phrase are left out of this one: no box is the answer.

A model never trained on regions still scores above chance where pooled patch tokens
keep colour and shape, which mean pooling makes likely.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image

from clipforge.data.shapes import ShapesWorld, article
from clipforge.eval import shapes_data
from clipforge.eval.datasets import ImageSet
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult
from clipforge.models.regions import roi_pool

DEFAULT_SCENES = 300


@dataclass
class RegionData:
    """Images, and per image its objects' boxes (fractions of the side) and phrases."""

    name: str
    images: ImageSet
    boxes: list[list[tuple[float, float, float, float]]]
    phrases: list[list[str]]


def _scene_loader(world: ShapesWorld, i: int) -> Image.Image:
    return world.sample(i).image


def shapes_regions(
    size: int, seed: int = 0, n: int | None = None, split: str = "test"
) -> RegionData:
    n = n or DEFAULT_SCENES
    world = ShapesWorld(size, split=split, seed=seed)
    scenes = [world.scene(i) for i in range(n)]
    boxes = [[tuple(v / size for v in o.box) for o in sc.objects] for sc in scenes]
    phrases = [[f"{article(o.colour)} {o.colour} {o.shape}" for o in sc.objects] for sc in scenes]
    images = ImageSet(f"shapes:scenes:{size}:{seed}:{split}:{n}", n, partial(_scene_loader, world))
    return RegionData(f"shapes-{split}", images, boxes, phrases)  # type: ignore[arg-type]


def region_embeddings(ctx: EvalContext, data: RegionData, batch: int = 64) -> torch.Tensor:
    """``[regions, D]`` unit embeddings of every box, scenes in order."""
    out = []
    for start in range(0, len(data.images), batch):
        idx = range(start, min(start + batch, len(data.images)))
        tokens = ctx.embedder.image_tokens([data.images.load(i) for i in idx])
        for row, i in enumerate(idx):
            boxes = torch.tensor(data.boxes[i], dtype=tokens.dtype)[None]
            out.append(roi_pool(tokens[row : row + 1], boxes)[0])
    return torch.cat(out)


def run(ctx: EvalContext, data: RegionData) -> TaskResult:
    regions = region_embeddings(ctx, data)
    flat = [p for ps in data.phrases for p in ps]
    names = sorted(set(flat))
    index = {p: k for k, p in enumerate(names)}
    texts = ctx.embedder.texts(names, desc="embed phrases")
    target = torch.tensor([index[p] for p in flat])
    sims = regions @ texts.T
    b2p = float((sims.argmax(dim=1) == target).float().mean())
    # Each grounding scene of k objects adds k phrases of chance 1/k: one hit by chance.
    hits, scenes, asked = 0, 0, 0
    start = 0
    for ps in data.phrases:
        k = len(ps)
        if k >= 2 and len(set(ps)) == k:
            s = texts[target[start : start + k]] @ regions[start : start + k].T  # [phrase, box]
            hits += int((s.argmax(dim=1) == torch.arange(k)).sum())
            scenes += 1
            asked += k
        start += k
    p2b = hits / asked if asked else 0.0
    metrics = {
        "box_to_phrase_R@1": b2p,
        "phrase_to_box_R@1": p2b,
        "box_to_phrase_chance": 1 / len(names),
        "phrase_to_box_chance": scenes / asked if asked else 0.0,
    }
    details = {"regions": len(flat), "phrases": len(names), "grounding phrases": asked}
    return TaskResult(metrics, details=details)


def _shapes(ctx: EvalContext) -> RegionData:
    # Capped below retrieval's scene count: image tokens are not cached.
    n = min(ctx.scenes or shapes_data.SCENES, shapes_data.SCENES, DEFAULT_SCENES)
    return shapes_regions(ctx.image_size, ctx.seed, n, ctx.split)


def _unavailable(ctx: EvalContext) -> str | None:
    if ctx.model.cfg.vision.pool == "grid":
        return "grid pooling projects no single image token to pool over a box"
    return None


TASKS.add(
    "region_retrieval",
    Task(
        "RoI-pooled boxes of scene objects <-> their phrases: box->phrase and grounding R@1",
        ("regions",),
        _shapes,
        run,
        _unavailable,
    ),
)
