"""The trimodal shapes world: the third view needs image and caption together."""

import numpy as np
import pytest

from clipforge.data.shapes import COLOURS, NUMBER_WORDS
from clipforge.data.shapes.trimodal import TriModalShapes
from clipforge.errors import ClipforgeError


def test_third_view_is_colour_plus_tag_and_captions_hide_the_colour():
    world = TriModalShapes(16, categories=5)
    colours = list(COLOURS)
    for i in range(40):
        s = world.sample(i)
        m = s.meta
        assert m["third"] == (m["colour"] + m["tag"]) % 5
        assert NUMBER_WORDS[m["tag"]] in s.texts[0] and m["shape"] in s.texts[0]
        assert not any(c in t for t in s.texts for c in colours)
        # The image shows the colour: its most saturated pixel is near the object's RGB.
        ref = COLOURS[colours[m["colour"]]]
        dist = np.abs(np.asarray(s.image, dtype=float) - ref).sum(axis=-1)
        assert dist.min() < 60
    assert world.sample(3).texts == TriModalShapes(16, categories=5).sample(3).texts


def test_each_factor_alone_says_nothing_about_the_third_view():
    # Colour and tag are uniform and independent, so for a fixed colour every third value
    # arises from exactly one tag: the counts per (colour, third) are flat up to noise.
    world = TriModalShapes(16, categories=3)
    pairs = [(c, (c + t) % 3) for c, t, _ in map(world.factors, range(900))]
    counts = [pairs.count((c, v)) for c in range(3) for v in range(3)]
    assert min(counts) > 60 and max(counts) < 140  # expected 100 each


def test_category_range():
    with pytest.raises(ClipforgeError, match="2 to 8 categories"):
        TriModalShapes(16, categories=9)
