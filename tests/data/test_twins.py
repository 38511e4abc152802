"""Counterfactual twins: the next sample is its predecessor with one fact changed."""

import random

import pytest

from clipforge.data.shapes import ShapesConfig, ShapesWorld, relation_of
from clipforge.data.shapes.scenes import INVERSE
from clipforge.data.shapes.twins import twin_scene
from clipforge.errors import ClipforgeError


def _world(**kw: object) -> ShapesWorld:
    return ShapesWorld(32, config=ShapesConfig(**kw))  # type: ignore[arg-type]


def _first(world: ShapesWorld, kind: str, count: int = 5) -> list:
    found = []
    for i in range(0, 4000, 2):
        sc = world.scene(i)
        if sc.kind == kind:
            found.append(sc)
        if len(found) == count:
            return found
    raise AssertionError(f"no {kind} scenes")


def test_an_attribute_twin_exchanges_two_colours_and_nothing_else():
    for sc in _first(_world(), "pair") + _first(_world(), "many"):
        twin = twin_scene(sc, "attribute", random.Random(0))
        if len({o.colour for o in sc.objects}) == 1:
            assert twin is None
            continue
        moved = [k for k, (a, b) in enumerate(zip(sc.objects, twin.objects, strict=True)) if a != b]
        assert len(moved) == 2
        i, j = moved
        a, b = sc.objects, twin.objects
        assert (b[i].colour, b[j].colour) == (a[j].colour, a[i].colour)
        assert all(
            (x.shape, x.size, x.box) == (y.shape, y.size, y.box) for x, y in zip(a, b, strict=True)
        )


def test_a_relation_twin_inverts_the_relation_inside_the_image():
    for sc in _first(_world(), "pair"):
        twin = twin_scene(sc, "relation", random.Random(0))
        assert twin.relation == INVERSE[sc.relation]
        assert relation_of(twin.objects[0], twin.objects[1]) == twin.relation
        for o in twin.objects:
            assert 0 <= o.box[0] < o.box[2] <= 32 and 0 <= o.box[1] < o.box[3] <= 32
    single = _first(_world(), "single", 1)[0]
    assert twin_scene(single, "relation", random.Random(0)) is None
    assert twin_scene(single, "attribute", random.Random(0)) is None


def test_twins_follow_their_originals_with_their_own_captions():
    plain, twinned = _world(), _world(twins=1.0, twin_kinds=("attribute",))
    seen = 0
    for i in range(0, 400, 2):
        # Even indices are untouched; an odd one is the twin of the scene before it.
        assert twinned.sample(i).texts == plain.sample(i).texts
        base = plain.scene(i)
        twin = twinned.twin(i + 1)
        eligible = base.kind in ("pair", "many") and len({o.colour for o in base.objects}) > 1
        assert (twin is not None) == eligible
        after = twinned.sample(i + 1)
        if twin is None:
            assert after.texts == plain.sample(i + 1).texts
            continue
        seen += 1
        assert after.texts[0] != plain.sample(i).texts[0]
        assert after.meta["objects"] == twin.meta()["objects"]
    assert seen >= 10
    # The same world twice: the same twins (samples are a pure function of the index).
    assert [_world(twins=0.5).sample(i).texts for i in range(60)] == [
        _world(twins=0.5).sample(i).texts for i in range(60)
    ]


def test_twins_start_at_their_first_index():
    w = _world(twins=1.0, twin_kinds=("attribute",), twins_from=200)
    twins = [i for i in range(1, 400, 2) if w.twin(i) is not None]
    assert twins and min(twins) > 200
    assert [i for i in range(201, 400, 2) if _world(twins=1.0).twin(i) is not None]


def test_a_twin_pair_carries_its_weight():
    w = _world(twins=1.0, twin_kinds=("attribute",), twin_weight=0.25)
    paired = [i for i in range(1, 200, 2) if w.twin(i) is not None]
    assert len(paired) >= 10
    for i in range(200):
        in_pair = i in paired or i + 1 in paired
        assert w.sample(i).meta.get("weight", 1.0) == (0.25 if in_pair else 1.0), i
    # At the default weight nothing is written: weight-free samples stay as they were.
    assert all("weight" not in _world(twins=1.0).sample(i).meta for i in range(40))


def test_no_twins_by_default_and_bad_settings_are_refused():
    assert all(_world().twin(i) is None for i in range(1, 200, 2))
    with pytest.raises(ClipforgeError, match="twins is a share"):
        _world(twins=1.5)
    with pytest.raises(ClipforgeError, match="unknown shapes twin kind 'colour'"):
        _world(twins=0.5, twin_kinds=("colour",))
    with pytest.raises(ClipforgeError, match="twin_weight is in"):
        _world(twins=0.5, twin_weight=0.0)
    with pytest.raises(ClipforgeError, match="twins_from"):
        _world(twins=0.5, twins_from=-1)


def test_the_twin_weight_reaches_the_training_batch():
    from clipforge.config import from_dict
    from clipforge.data.loader import iter_batches
    from clipforge.train import TrainConfig
    from clipforge.train.builders import build
    from clipforge.train.distributed import World

    shapes = {"twins": 1.0, "twin_kinds": ["attribute"], "twin_weight": 0.25}
    cfg = from_dict(TrainConfig, {"shapes_args": shapes, "batch_size": 64, "out": "unused"})
    parts = build(cfg, World())
    batch = next(iter_batches(parts.source, parts.processor, parts.collate, 64))
    # The default run's world: the tiny preset's 32 pixels, training split, seed 0.
    world = ShapesWorld(32, config=ShapesConfig(**{**shapes, "twin_kinds": ("attribute",)}))
    expected = [world.sample(i).meta.get("weight", 1.0) for i in range(64)]
    assert batch.weights.tolist() == expected and 0.25 in expected
