"""The captioning task's attribute scores, by hand."""

import pytest

from clipforge.eval.captioning import attribute_pairs, attribute_scores, text_scores


def test_attribute_pairs_read_colour_shape_bigrams():
    assert attribute_pairs("a large red circle left of a blue square") == {
        ("red", "circle"), ("blue", "square")
    }  # fmt: skip
    assert attribute_pairs("three small green crosses") == {("green", "cross")}
    # A size between colour and shape is not how captions bind; "red" alone is no pair.
    assert attribute_pairs("a red large circle and a red") == set()


def test_attribute_scores_by_hand():
    captions = [
        "a red circle and a blue square",  # both objects, bound right: exact
        "a blue circle and a red square",  # colours and shapes right, bindings swapped
        "a green star",  # right
        "a photo of something",  # nothing
    ]
    objects = [
        [("red", "circle"), ("blue", "square")],
        [("red", "circle"), ("blue", "square")],
        [("green", "star")],
        [("white", "cross")],
    ]
    got = attribute_scores(captions, objects)
    assert got == {
        "exact_match": 2 / 4,
        "binding_recall": 3 / 6,  # objects 1, 2 and 5 of 6
        "binding_precision": 3 / 5,  # 5 named pairs, 3 in their scene
        "colour_recall": 5 / 6,
        "shape_recall": 5 / 6,
    }


def test_text_scores_are_one_for_a_reference_caption():
    pytest.importorskip("pycocoevalcap")
    refs = [["a red circle", "a large red circle"], ["two blue squares", "2 blue squares"]]
    got = text_scores(["a large red circle", "two blue squares"], refs)
    # A caption equal to one of its references has every n-gram matched (each caption has
    # at least 3 words, so BLEU-1..3 are exactly 1; BLEU-4 needs 4-grams, which "two blue
    # squares" lacks, and is smoothed by pycocoevalcap below 1). pycocoevalcap adds
    # 1e-9 and 1e-15 to its counts, hence the slack, far below one n-gram's 1/3.
    assert got["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert got["bleu_3"] == pytest.approx(1.0, abs=1e-6)
    assert got["cider"] > 0
