"""Counterfactual twins: a scene re-rendered with one structured fact changed.

A twin is the image-side counterpart of a hard-negative caption. Placed in the same batch
as its original, it turns plain in-batch contrast into a binding lesson: the caption "a
red square and a blue circle" must match its own image better than the twin with the
colours exchanged, and the twin's caption the other way round. Neither tower can solve
that pair from the bag of words or the bag of colours and shapes.

Twin kinds:

``attribute``  the colours of two differently coloured objects are exchanged (two or
               more objects of different colours)
``relation``   every object is reflected through the image centre, which inverts the
               relation of a two-object scene ("A left of B" becomes "A right of B")
               and keeps every object inside the image
"""

from __future__ import annotations

import random
from dataclasses import replace

from clipforge.data.shapes.scenes import Scene, relation_of
from clipforge.errors import ClipforgeError

TWIN_KINDS: tuple[str, ...] = ("attribute", "relation")


def check_twin_kinds(kinds: tuple[str, ...]) -> None:
    """Refuse unknown twin kinds in one line."""
    bad = [k for k in kinds if k not in TWIN_KINDS]
    if bad or not kinds:
        raise ClipforgeError(
            f"unknown shapes twin kind {bad[0] if bad else '(none)'!r} "
            f"(known: {', '.join(TWIN_KINDS)})"
        )


def swap_colours(scene: Scene, rng: random.Random) -> Scene | None:
    """``scene`` with the colours of two differently coloured objects exchanged (a seeded
    choice of the pair), or None for a lone object or objects of one colour. The attribute
    twin and the attribute hard-negative caption (:mod:`.hardneg`) are this one change."""
    objs = scene.objects
    if scene.kind not in ("pair", "many"):
        return None
    pairs = [
        (i, j)
        for i in range(len(objs))
        for j in range(i + 1, len(objs))
        if objs[i].colour != objs[j].colour
    ]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    new = list(objs)
    new[i] = replace(objs[i], colour=objs[j].colour)
    new[j] = replace(objs[j], colour=objs[i].colour)
    return replace(scene, objects=new)


def twin_scene(scene: Scene, kind: str, rng: random.Random) -> Scene | None:
    """``scene`` with one ``kind`` change, or None where the change does not apply (a lone
    object, a group of identical objects, a relation twin of more than two objects)."""
    objs = scene.objects
    if kind == "attribute":
        return swap_colours(scene, rng)
    if kind == "relation":
        if scene.kind != "pair" or not scene.image_size:
            return None
        n = scene.image_size
        new = [
            replace(o, box=(n - o.box[2], n - o.box[3], n - o.box[0], n - o.box[1])) for o in objs
        ]
        return replace(scene, objects=new, relation=relation_of(new[0], new[1]))
    check_twin_kinds((kind,))
    raise AssertionError("unreachable")
