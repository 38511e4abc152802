"""Prototype discrimination: the multi-label loss by hand, the bank, k-means, purity."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import Features
from clipforge.losses.proto import ProtoObjective, kmeans, multilabel_loss, nearest, purity
from tests.tolerance import reorder_bound


def test_multilabel_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[True, True, False], [False, False, True]])
    got = float(multilabel_loss(z, protos, pos, temperature=0.5))
    # Row 0 scores (2, 0, -2), positives 0 and 1; row 1 scores (0, 2, 0), positive 2.
    z0 = math.exp(2) + 1 + math.exp(-2)
    z1 = 1 + math.exp(2) + 1
    want = (-math.log((math.exp(2) + 1) / z0) - math.log(1 / z1)) / 2
    # float64 softmaxes of three terms below e^2.
    assert got == pytest.approx(want, abs=reorder_bound(12, 10.0, torch.float64))


def test_nearest_marks_the_m_most_similar():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    got = nearest(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), protos, 2)
    assert got.tolist() == [[True, False, True], [False, True, True]]


def test_purity_by_hand():
    assert purity(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([2, 2, 0, 1, 1])) == 4 / 5


def test_kmeans_is_repeatable_and_finds_clear_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    labels = torch.arange(60) % 3
    x = F.normalize(centres[labels] + 0.05 * torch.randn(60, 8, generator=g), dim=1)
    a, b = kmeans(x, 3, seed=5), kmeans(x, 3, seed=5)
    assert torch.equal(a, b)  # one thread, one seed: the same centres
    assign = (x @ a.T).argmax(dim=1)
    assert purity(assign, labels) == 1.0


def test_the_bank_is_a_ring_and_prototypes_refresh_on_schedule():
    obj = ProtoObjective(dim=2, k=2, bank=3, every=2, labels=1)
    rows = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0], [0.6, 0.8]])
    f = Features(rows[:2], rows[:2], torch.tensor(1.0))
    assert float(obj(f)) == 0.0  # no prototypes yet
    obj.after_step(None)  # step 1: two rows in
    assert int(obj.filled) == 2 and not bool(obj.ready)
    obj(Features(rows[2:5], rows[2:5], torch.tensor(1.0)))
    obj.after_step(None)  # step 2: three more, the ring wraps once; k-means runs
    assert int(obj.filled) == 3 and int(obj.cursor) == 2
    assert torch.equal(obj.bank, rows[[3, 4, 2]])  # rows 3 and 4 overwrote 0 and 1
    assert bool(obj.ready) and obj.prototypes.shape == (2, 2)
    assert float(obj(f).detach()) > 0.0
