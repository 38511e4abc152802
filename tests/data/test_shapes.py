import numpy as np
import pytest

from clipforge.data.shapes import (
    COLOURS,
    SHAPES,
    SIZES,
    ShapesWorld,
    captions_for,
    class_names,
    relation_of,
    without_colour,
)
from clipforge.errors import ClipforgeError


def test_vocabulary_sizes():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 8 and len(SIZES) >= 2
    assert len(class_names()) == len(SHAPES) * len(COLOURS) >= 40


def test_deterministic_and_split_disjoint():
    a = ShapesWorld(32, "train", seed=0).sample(7)
    b = ShapesWorld(32, "train", seed=0).sample(7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.texts == b.texts and a.meta == b.meta
    train = {ShapesWorld(32, "train").sample(i).meta["objects"].__repr__() for i in range(200)}
    test = {ShapesWorld(32, "test").sample(i).meta["objects"].__repr__() for i in range(200)}
    assert not train & test  # boxes are continuous: identical scenes mean shared seeds
    other_seed = ShapesWorld(32, "train", seed=1).sample(7)
    assert other_seed.meta != a.meta


def test_any_size_and_rgb():
    for size in (16, 64, 100):
        s = ShapesWorld(size).sample(3)
        assert s.image.size == (size, size) and s.image.mode == "RGB"
    with pytest.raises(ClipforgeError, match="split"):
        ShapesWorld(32, "nope")


def test_metadata_matches_pixels():
    world = ShapesWorld(64)
    for i in range(30):
        s = world.sample(i)
        objs = s.meta["objects"]
        assert s.meta["count"] == len(objs) and 1 <= len(objs) <= 4
        img = np.asarray(s.image).astype(int)
        for o in objs:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            # Every shape covers its centre, so the centre pixel has the object's colour.
            assert np.abs(img[cy, cx] - np.array(COLOURS[o["colour"]])).max() < 40, (i, o)
        # Boxes never overlap, so counts can be read off the image.
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                A, B = objs[a]["box"], objs[b]["box"]
                assert A[2] <= B[0] or B[2] <= A[0] or A[3] <= B[1] or B[3] <= A[1]


def test_captions_cover_kinds_and_name_objects():
    world = ShapesWorld(32)
    kinds = {}
    for i in range(300):
        s = world.sample(i)
        kinds.setdefault(s.meta["kind"], s)
        assert len(s.texts) >= 4 and len(set(s.texts)) == len(s.texts)
        first = s.texts[0]
        for o in s.meta["objects"]:
            assert o["colour"] in first and o["shape"] in first
    assert set(kinds) == {"single", "group", "pair", "many"}
    group = kinds["group"]
    n = group.meta["count"]
    assert ["two", "three", "four"][n - 2] in group.texts[0]
    assert "an orange" in captions_for(world.object_scene(0, "circle", "orange", "small"))[1]


@pytest.mark.parametrize(
    ("caption", "colour", "expected"),
    [
        ("a small orange circle", "orange", "a small circle"),
        ("an orange circle", "orange", "a circle"),
        ("a photo of an orange circle", "orange", "a photo of a circle"),
        ("three small white squares", "white", "three small squares"),
        ("3 white squares", "white", "3 squares"),
    ],
)
def test_without_colour_leaves_out_the_colour_and_mends_the_article(caption, colour, expected):
    assert without_colour(caption, colour) == expected


def test_without_colour_refuses_a_caption_that_does_not_name_it():
    with pytest.raises(ValueError, match="does not name the colour 'red'"):
        without_colour("a blue circle", "red")


def test_relation():
    from clipforge.data.shapes import ShapeObject

    a = ShapeObject("circle", "red", "small", (0, 10, 4, 14))
    b = ShapeObject("square", "blue", "small", (20, 12, 24, 16))
    c = ShapeObject("star", "blue", "small", (1, 30, 5, 34))
    assert relation_of(a, b) == "left of" and relation_of(b, a) == "right of"
    assert relation_of(a, c) == "above" and relation_of(c, a) == "below"


def test_object_sample_attributes():
    s = ShapesWorld(32, "test").object_sample(5, "star", "cyan", "large")
    (o,) = s.meta["objects"]
    assert (o["shape"], o["colour"], o["size"]) == ("star", "cyan", "large")
    assert s.texts[1] == "a cyan star"
