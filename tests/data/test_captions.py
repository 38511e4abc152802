"""Caption strategies, hard negatives and the Batch text layout."""

import pytest
import torch

from clipforge.data.batches import Collator, Item, SampleProcessor
from clipforge.data.sample import Sample
from clipforge.data.shapes import ShapesWorld
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop

WORLD = ShapesWorld(16, seed=0)


def _proc(**kw):
    return SampleProcessor(SeededCrop(16, (0.8, 1.0)), seed=0, **kw)


def _collate():
    return Collator(get_tokenizer(16), (0.5,) * 3, (0.5,) * 3)


def _pair_index():
    return next(i for i in range(100) if WORLD.sample(i).meta["kind"] == "pair")


def test_strategies_pick_the_expected_captions():
    s = WORLD.sample(_pair_index())
    assert _proc(caption="first")(0, s).texts == [s.texts[0]]
    assert _proc(caption="all", max_captions=10)(0, s).texts == s.texts
    some = _proc(caption="all", max_captions=2)(0, s).texts
    assert len(some) == 2 and set(some) <= set(s.texts)
    one = _proc(caption="random")(0, s).texts
    assert len(one) == 1 and one[0] in s.texts
    # The image crop does not depend on the caption strategy.
    a, b = _proc(caption="first")(7, s), _proc(caption="first", hard_negatives=("relation",))(7, s)
    assert a.image.equal(b.image)


def test_shapes_negatives_follow_the_chosen_template():
    i = _pair_index()
    s = WORLD.sample(i)
    item = _proc(caption="first", hard_negatives=("relation", "count"))(0, s)
    rel = s.meta["relation"]
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert item.negatives == [s.texts[0].replace(rel, inverse[rel])]


def test_given_negatives_and_collation_layout():
    img = WORLD.sample(0).image
    samples = [
        Sample(img, ["a cat", "a small cat"], {"hard_negatives": ["a dog", "a cat"]}),
        Sample(img, ["a bird"], {"hard_negatives": ["a dog"]}),
    ]
    proc = _proc(caption="all")
    items = [proc(i, s) for i, s in enumerate(samples)]
    batch = _collate()(items, 2, {})
    # "a cat" is image 0's own caption and the second "a dog" repeats: both dropped.
    assert batch.texts == ["a cat", "a small cat", "a bird", "a dog"]
    assert batch.owner.tolist() == [0, 0, 1, -1]
    assert batch.text_row.tolist() == [0, 0, 1, 0]
    assert batch.tokens.shape == (4, 16)
    tail = batch.rows(slice(1, 2))
    assert tail.texts == ["a bird"] and tail.owner.tolist() == [0]
    head = batch.rows(slice(0, 1))
    assert head.texts == ["a cat", "a small cat", "a dog"]
    assert head.owner.tolist() == [0, 0, -1] and head.images.shape[0] == 1


def test_plain_batches_keep_the_diagonal_layout():
    items = [Item(i, torch.zeros(3, 16, 16, dtype=torch.uint8), [f"t{i}"]) for i in range(3)]
    batch = _collate()(items, 3, {})
    assert batch.owner is None and batch.texts == ["t0", "t1", "t2"]
    assert batch.rows(slice(1, 3)).texts == ["t1", "t2"]


def test_unknown_strategy():
    with pytest.raises(ValueError):
        _proc(caption="some")
