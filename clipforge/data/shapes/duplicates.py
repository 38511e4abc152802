"""A record-linkage set from the shapes world: each scene several times, as other records.

Copy ``c`` of scene ``i`` is the same scene (objects, layout, background) rendered with
its own colour jitter, cropped to 80-95% of its side (keeping every object inside where
the crop can hold them all) and scaled back, and captioned by another of the scene's
caption templates. Its metadata names the scene in ``group``: the ground truth that
``clipforge link --truth group`` scores against.

Neither modality settles the task alone: many scenes share their objects' attributes,
so their captions can be word for word the same ("a red circle"), while a copy's crop
moves and rescales what the image shows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from PIL import Image

from clipforge.data.sample import Sample
from clipforge.data.shapes.captions import captions_for
from clipforge.data.shapes.world import ShapesWorld

CROP = (0.8, 0.95)  # side of the crop, as a fraction of the image side


def _crop(img: Image.Image, boxes: list[tuple[float, ...]], rng: random.Random) -> Image.Image:
    s = img.width
    side = rng.uniform(*CROP) * s
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)

    def start(lo: float, hi: float) -> float:
        # Offsets that keep [lo, hi] inside the crop, if there are any; else any offset.
        a, b = max(0.0, hi - side), min(s - side, lo)
        return rng.uniform(a, b) if a <= b else rng.uniform(0.0, s - side)

    left, top = start(x0, x1), start(y0, y1)
    return img.resize((s, s), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def duplicate(world: ShapesWorld, index: int, copy: int) -> Sample:
    """Copy ``copy`` of scene ``index`` of ``world`` (see the module docstring)."""
    scene = world.scene(index)
    rng = random.Random(f"{world.seed}/{world.split}/duplicates/{index}/{copy}")
    img = _crop(world.render(scene, rng), [o.box for o in scene.objects], rng)
    caps = captions_for(scene)
    # One shuffle per scene, so copies take distinct templates while there are enough.
    order = list(range(len(caps)))
    random.Random(f"{world.seed}/{world.split}/duplicates/{index}").shuffle(order)
    caption = caps[order[copy % len(order)]]
    group = f"{world.split}-{index:09d}"
    meta = {**scene.meta(), "group": group, "copy": copy}
    return Sample(img, [caption], meta, key=f"{group}-{copy}")


def duplicates(world: ShapesWorld, scenes: int, copies: int) -> Iterator[Sample]:
    """``copies`` copies of each of the first ``scenes`` scenes, scene by scene."""
    for i in range(scenes):
        for c in range(copies):
            yield duplicate(world, i, c)


__all__ = ["CROP", "duplicate", "duplicates"]
