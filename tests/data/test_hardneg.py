import random

import pytest

from clipforge.data.shapes import ShapesWorld
from clipforge.data.shapes.hardneg import hard_negatives, perturb, positive_caption, scene_from_meta
from clipforge.errors import ClipforgeError


def _obj(shape, colour, size, x):
    return {"shape": shape, "colour": colour, "size": size, "box": [x, 10, x + 8, 18]}


PAIR = {
    "kind": "pair",
    "relation": "left of",
    "objects": [_obj("circle", "red", "large", 0), _obj("square", "blue", "small", 20)],
}
GROUP = {"kind": "group", "relation": None, "objects": [_obj("star", "green", "small", 0)] * 3}


def test_pair_perturbations_are_exact():
    rng = random.Random(0)
    assert positive_caption(PAIR) == "a large red circle left of a small blue square"
    assert perturb(PAIR, "attribute", rng) == "a large blue circle left of a small red square"
    assert perturb(PAIR, "relation", rng) == "a large red circle right of a small blue square"
    assert perturb(PAIR, "count", rng) is None
    shape = perturb(PAIR, "shape", rng)
    assert shape is not None and shape != positive_caption(PAIR)
    assert shape.replace("large", "").count("red") == 1  # colours untouched


def test_group_count_and_shape():
    rng = random.Random(1)
    assert positive_caption(GROUP) == "three small green stars"
    assert perturb(GROUP, "count", rng) in ("two small green stars", "four small green stars")
    assert perturb(GROUP, "attribute", rng) is None and perturb(GROUP, "relation", rng) is None
    neg = perturb(GROUP, "shape", rng)
    assert neg is not None and neg.startswith("three small green ") and "stars" not in neg


def test_template_without_the_fact_gives_none():
    # Template 3 of a pair ("A and B") does not state the relation.
    assert perturb(PAIR, "relation", random.Random(0), template=3) is None
    assert perturb(PAIR, "relation", random.Random(0), template=2) == (
        "a blue square left of a red circle"
    )


def test_positive_matches_world_and_negatives_differ():
    world = ShapesWorld(32, seed=3)
    kinds_seen = set()
    for i in range(200):
        s = world.sample(i)
        assert positive_caption(s.meta) == s.texts[0]
        negs = hard_negatives(s.meta, random.Random(i))
        assert all(n not in s.texts for n in negs.values())
        kinds_seen.update(negs)
    assert kinds_seen == {"attribute", "relation", "count", "shape"}


def test_bad_meta_and_kind():
    with pytest.raises(ClipforgeError):
        scene_from_meta({"kind": "pair"})
    with pytest.raises(ClipforgeError):
        perturb(PAIR, "colour", random.Random(0))
