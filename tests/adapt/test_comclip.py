"""ComCLIP's compositional matching: caption parts, crops, the combined score."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clipforge.adapt.comclip import (
    ComCLIPOptions,
    caption_parts,
    combined_scores,
    comclip_scores,
    crop,
    evaluate_choice,
    read_boxes,
    shapes_boxes,
)
from clipforge.errors import ClipforgeError

# Sums and maxima of four or fewer float32 numbers of size <= 1: rounding below 1e-6.
TOL = 1e-6


def test_caption_parts_are_the_entity_phrases():
    assert caption_parts("a large red circle left of a small blue square") == [
        "a large red circle", "a small blue square"]  # fmt: skip
    assert caption_parts("three shapes: a red circle, a blue square and a green star") == [
        "a red circle", "a blue square", "a green star"]  # fmt: skip
    assert caption_parts("three red circles") == []  # one entity: the caption itself


def test_combined_score_adds_the_mean_best_crop_match_of_the_parts():
    g = torch.tensor([0.5, 0.5])  # the global score cannot tell the options apart
    # Option 0: its parts match crops 0 and 1 at 0.9 and 0.8; option 1's best are 0.4, 0.6.
    parts = [torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[0.3, 0.4], [0.6, 0.1]])]
    got = combined_scores(g, parts, weight=1.0)
    assert torch.allclose(got, torch.tensor([0.5 + 0.85, 0.5 + 0.5]), atol=TOL)
    assert torch.allclose(combined_scores(g, parts, 0.5), torch.tensor([0.925, 0.75]), atol=TOL)
    # An option without parts: the whole row is scored globally.
    assert torch.equal(combined_scores(g, [parts[0], torch.zeros(0, 2)], 1.0), g)


def test_crop_adds_the_margin_and_stays_inside_the_image():
    im = Image.new("RGB", (10, 10))
    assert crop(im, (2, 2, 6, 6), 0.25).size == (6, 6)  # 1 px margin each side
    assert crop(im, (0, 0, 4, 10), 0.5).size == (6, 10)  # clipped at the borders


def test_read_boxes_refuses_a_wrong_file(tmp_path):
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps([[[0, 0, 4, 4]], []]))
    assert read_boxes(f, 2) == [[(0.0, 0.0, 4.0, 4.0)], []]
    with pytest.raises(ClipforgeError, match="expected a list of 3 box lists, got 2"):
        read_boxes(f, 3)
    f.write_text(json.dumps([[[4, 0, 0, 4]]]))
    with pytest.raises(ClipforgeError, match="image 0: a box is not"):
        read_boxes(f, 1)


def test_plain_scores_are_the_evaluators_and_parts_change_them(micro_args):
    from clipforge.adapt import make_embedder
    from clipforge.eval.choice import choice_scores
    from clipforge.eval.compositional import shapes_hardneg
    from clipforge.eval.shapes_data import scenes
    from clipforge.models import create_model

    torch.manual_seed(0)
    emb = make_embedder(create_model("tiny", micro_args))
    data = shapes_hardneg(16, n=12)
    world, _ = scenes(16, n=12)
    boxes = shapes_boxes(world, 12)
    plain, comb = comclip_scores(emb, data, boxes, ComCLIPOptions())

    class Ctx:
        embedder = emb

    want = choice_scores(Ctx(), data)
    assert all(torch.equal(a, b) for a, b in zip(plain, want, strict=True))
    # Rows whose captions split into parts get a different score; the others do not.
    split = [all(caption_parts(c) for c in opts) for opts in data.options]
    assert any(split) and not all(split)
    for s, p, c in zip(split, plain, comb, strict=True):
        assert torch.equal(p, c) != s
    res = evaluate_choice(emb, data, boxes, ComCLIPOptions(weight=0.0))
    assert res["clip"] == res["comclip"]  # weight 0 is plain CLIP
