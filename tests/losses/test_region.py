"""Region-text contrast: RoI pooling on a hand-made grid, the loss and TIC by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.data.batches import Collator, SampleProcessor
from clipforge.data.sample import Sample
from clipforge.data.shapes import ShapesWorld
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop, crop_box
from clipforge.losses.region import phrase_groups, region_contrast, tic_loss
from clipforge.models.regions import cell_weights, roi_pool
from tests.tolerance import reorder_bound


def test_cell_weights_are_covered_shares():
    # A 2x2 grid; the box covers the whole left column and half of the top-right cell.
    w = cell_weights(torch.tensor([[0.0, 0.0, 0.75, 0.5]]), 2)
    assert w.tolist() == [[1.0, 0.5, 0.0, 0.0]]  # cells (0,0) (0,1) (1,0) (1,1)
    w = cell_weights(torch.tensor([[0.0, 0.0, 0.5, 1.0]]), 2)
    assert w.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_roi_pool_on_a_hand_made_grid():
    # Cells (row-major) hold distinct one-hot-ish tokens on a 2x2 grid.
    tokens = torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 8.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    got = roi_pool(tokens, boxes, normalize=False)[0]
    # Box 0: (1 * t0 + 0.5 * t1) / 1.5; box 1: t3 alone; box 2: the mean of all four.
    want = torch.tensor([[1 / 1.5, 1 / 1.5, 0, 0], [0, 0, 0, 8.0], [0.25, 0.5, 1.0, 2.0]])
    # Weighted sums of at most 4 terms of values <= 8 and one division: a few roundings.
    assert torch.allclose(got, want, rtol=0, atol=reorder_bound(6, 8.0))
    unit = roi_pool(tokens, boxes)[0]
    assert torch.allclose(unit.norm(dim=1), torch.ones(3), atol=reorder_bound(6, 1.0))


def test_region_contrast_by_hand():
    # Three regions; regions 0 and 2 share a phrase (group 0), region 1 has its own.
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    group = torch.tensor([0, 1, 0])
    s = torch.tensor(2.0, dtype=torch.float64)
    got = float(region_contrast(r, p, group, s))

    # U = (p0, p1). Region -> phrase: softmax over (s r.u0, s r.u1).
    def nll(a, b):  # -log e^a / (e^a + e^b)
        return math.log(math.exp(a) + math.exp(b)) - a

    l_r = (nll(2, 0) + nll(2, 0) + nll(1.2, 1.6)) / 3  # region 2 scores (1.2, 1.6)
    # Phrase -> region: u0 scores (2, 0, 1.2), positives regions 0 and 2; u1 (0, 2, 1.6).
    z0 = math.exp(2) + math.exp(0) + math.exp(1.2)
    z1 = math.exp(0) + math.exp(2) + math.exp(1.6)
    l_p = (-math.log((math.exp(2) + math.exp(1.2)) / z0) - math.log(math.exp(2) / z1)) / 2
    # float64 softmaxes of 2-3 terms: far below 1e-12 of values below 2.
    assert got == pytest.approx((l_r + l_p) / 2, abs=reorder_bound(20, 4.0, torch.float64))


def test_tic_by_hand():
    u = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64), dim=1)
    s = torch.tensor(3.0, dtype=torch.float64)
    got = float(tic_loss(u, s, k=1))
    # Each phrase's single most similar other: 0 <-> 1 (0.8), 2 -> 1 (0.6).
    want = (2 * math.log(1 + math.exp(3 * (0.8 - 1))) + math.log(1 + math.exp(3 * (0.6 - 1)))) / 3
    assert got == pytest.approx(want, abs=reorder_bound(12, 2.0, torch.float64))
    assert float(tic_loss(u[:1], s, 1)) == 0.0


def test_phrase_groups_number_equal_rows_alike():
    tok = torch.tensor([[1, 2], [3, 4], [1, 2]])
    g = phrase_groups(tok)
    assert g[0] == g[2] and g[0] != g[1]


def test_crop_box_moves_with_the_crop():
    # A crop of rows 8..24, columns 4..20 (16 x 16) of a 32 x 32 image.
    assert crop_box((4.0, 8.0, 12.0, 16.0), (8, 4, 16, 16, False)) == (0.0, 0.0, 0.5, 0.5)
    # Flipped: x mirrors inside the crop.
    assert crop_box((4.0, 8.0, 12.0, 16.0), (8, 4, 16, 16, True)) == (0.5, 0.0, 1.0, 0.5)


def test_the_pipeline_carries_boxes_and_phrases():
    world = ShapesWorld(16, seed=1)
    samples = [world.sample(i) for i in range(6)]
    # Scale and aspect 1: the crop is the whole image.
    proc = SampleProcessor(SeededCrop(16, (1.0, 1.0), (1.0, 1.0)), seed=0, regions=4)
    items = [proc(i, s) for i, s in enumerate(samples)]
    tok = get_tokenizer(24)
    batch = Collator(tok, (0.5,) * 3, (0.5,) * 3, regions=4)(items, 6, {})
    boxes, mask, phrases = (
        batch.extra[k] for k in ("region_boxes", "region_mask", "region_tokens")
    )
    assert boxes.shape == (6, 4, 4) and mask.shape == (6, 4) and phrases.shape == (6, 4, 24)
    for i, s in enumerate(samples):
        objs = s.meta["objects"]
        assert int(mask[i].sum()) == len(objs)
        for k, o in enumerate(objs):
            art = "an" if o["colour"][0] in "aeiou" else "a"
            assert tok.decode(phrases[i, k]) == f"{art} {o['colour']} {o['shape']}"
            # Boxes as fractions of the side: one division (float64, then stored in
            # float32: one rounding of a value <= 1).
            want = (torch.tensor(o["box"], dtype=torch.float64) / 16).clamp(0, 1).float()
            assert torch.allclose(boxes[i, k], want, rtol=0, atol=reorder_bound(2, 1.0))
    # Without regions the processor draws the same crops (the same generator calls).
    plain = SampleProcessor(SeededCrop(16, (0.6, 1.0)), seed=0)
    with_r = SampleProcessor(SeededCrop(16, (0.6, 1.0)), seed=0, regions=2)
    for i, s in enumerate(samples):
        a, b = plain(i, s), with_r(i, s)
        assert torch.equal(a.image, b.image) and a.texts == b.texts and len(b.regions) <= 2


def test_a_sample_without_objects_is_skipped():
    proc = SampleProcessor(SeededCrop(16), seed=0, regions=4)
    sample = Sample(ShapesWorld(16).sample(0).image, ["a caption"], {}, key="x")
    assert proc(0, sample).skip == "missing_meta:objects"
