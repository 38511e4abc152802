"""Hard-negative captions for shapes-world scenes: the caption, minimally changed.

A hard negative differs from the true caption in exactly one structured fact, so a model
can only reject it by binding attributes to objects, counting or reading spatial
relations. The same generators serve training (extra negative columns in the loss) and
evaluation (true caption against each perturbation).

Perturbation kinds:

``attribute``  the colours of two differently coloured objects are exchanged
``relation``   "A left of B" becomes "A right of B" (two-object scenes)
``count``      "three red circles" becomes "two red circles" (groups of one object)
``shape``      one object's shape (a group's shared shape) is replaced

Scenes are rebuilt from ``Sample.meta``, so the generators work on shapes-world samples
read back from manifests or shards as well as on live ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from clipforge.data.shapes.captions import captions_for
from clipforge.data.shapes.scenes import INVERSE, SHAPES, Scene, ShapeObject
from clipforge.data.shapes.twins import swap_colours
from clipforge.errors import ClipforgeError

PERTURBATIONS: tuple[str, ...] = ("attribute", "relation", "count", "shape")
# "position" flips where a lone object is ("on the left" -> "on the right"); it only
# changes the position captions of ``ShapesConfig(position_captions=True)``.
TRAINING_PERTURBATIONS: tuple[str, ...] = (*PERTURBATIONS, "position")
# Groups in the default world hold 2-4 objects; a wrong count stays inside that range so
# the negative is not rejectable by an out-of-distribution number word alone.
COUNT_RANGE: tuple[int, ...] = (2, 3, 4)


def scene_from_meta(meta: Mapping[str, Any]) -> Scene:
    """The scene described by a shapes-world ``Sample.meta`` dict."""
    try:
        objects = [
            ShapeObject(o["shape"], o["colour"], o["size"], tuple(o["box"]))  # type: ignore[arg-type]
            for o in meta["objects"]
        ]
        return Scene(
            objects,
            meta["kind"],
            (0, 0, 0),
            meta.get("relation"),
            image_size=meta.get("image_size"),
        )
    except (KeyError, TypeError) as e:
        raise ClipforgeError(f"not a shapes-world scene description (missing {e})") from None


def positive_caption(meta: Mapping[str, Any], template: int = 0) -> str:
    """Caption number ``template`` of the scene (0 is the canonical, most detailed one)."""
    caps = captions_for(scene_from_meta(meta), positions=True)
    return caps[min(template, len(caps) - 1)]


def _perturbed_scene(scene: Scene, kind: str, rng: random.Random) -> Scene | None:
    objs = scene.objects
    if kind == "attribute":
        return swap_colours(scene, rng)
    if kind == "relation":
        if scene.kind != "pair" or scene.relation is None:
            return None
        return replace(scene, relation=INVERSE[scene.relation])
    if kind == "count":
        if scene.kind != "group":
            return None
        n = rng.choice([c for c in COUNT_RANGE if c != len(objs)])
        return replace(scene, objects=[objs[0]] * n)
    if kind == "shape":
        if scene.kind == "group":
            shape = rng.choice([s for s in SHAPES if s != objs[0].shape])
            return replace(scene, objects=[replace(o, shape=shape) for o in objs])
        i = rng.randrange(len(objs))
        shape = rng.choice([s for s in SHAPES if s != objs[i].shape])
        new = list(objs)
        new[i] = replace(objs[i], shape=shape)
        return replace(scene, objects=new)
    if kind == "position":
        if scene.kind != "single" or not scene.image_size:
            return None
        # Reflecting the object through the image centre flips left/right and top/bottom.
        n = scene.image_size
        x0, y0, x1, y1 = objs[0].box
        return replace(scene, objects=[replace(objs[0], box=(n - x1, n - y1, n - x0, n - y0))])
    raise ClipforgeError(
        f"unknown perturbation {kind!r} (known: {', '.join(TRAINING_PERTURBATIONS)})"
    )


def perturb(
    meta: Mapping[str, Any], kind: str, rng: random.Random, template: int | str = 0
) -> str | None:
    """A negative caption of the same template with one ``kind`` perturbation.

    ``template`` is a template number of :func:`captions_for` (with position captions)
    or the caption itself. Returns None when the perturbation does not apply to the
    scene (a relation needs a two-object scene, a count a group) or would not change
    this template's wording (e.g. "a red circle and a blue square" says nothing about
    the relation), or when the caption is not one of the scene's.
    """
    scene = scene_from_meta(meta)
    changed = _perturbed_scene(scene, kind, rng)
    if changed is None:
        return None
    # Position captions come after the usual templates, so one list serves both worlds.
    caps, neg = captions_for(scene, positions=True), captions_for(changed, positions=True)
    if isinstance(template, str):
        if template not in caps:
            return None
        template = caps.index(template)
    t = min(template, len(caps) - 1)
    return None if t >= len(neg) or neg[t] == caps[t] else neg[t]


def hard_negatives(
    meta: Mapping[str, Any],
    rng: random.Random,
    kinds: Sequence[str] = PERTURBATIONS,
    template: int | str = 0,
) -> dict[str, str]:
    """One negative caption per applicable perturbation kind, keyed by kind."""
    out: dict[str, str] = {}
    for kind in kinds:
        neg = perturb(meta, kind, rng, template)
        if neg is not None:
            out[kind] = neg
    return out


__all__ = [
    "COUNT_RANGE",
    "PERTURBATIONS",
    "TRAINING_PERTURBATIONS",
    "hard_negatives",
    "perturb",
    "positive_caption",
    "scene_from_meta",
]
