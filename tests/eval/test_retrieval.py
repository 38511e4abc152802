import pytest
import torch

from clipforge.eval.retrieval import recall_at_k, retrieval
from tests.tolerance import count_mean_bound


def test_recall_hand_case():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5],  # positive (0) ranked 1st
            [0.9, 0.1, 0.5],  # positive (1) ranked 3rd
            [0.2, 0.8, 0.5],  # positive (2) ranked 2nd
        ]
    )
    pos = torch.eye(3, dtype=torch.bool)
    r = recall_at_k(scores, pos, ks=(1, 2, 3))
    # float32 means of hits: exact counts over 3, rounded.
    third, two_thirds = (pytest.approx(v, abs=count_mean_bound(v)) for v in (1 / 3, 2 / 3))
    assert r == {1: third, 2: two_thirds, 3: pytest.approx(1.0, abs=count_mean_bound(1.0))}


def test_several_positives_any_counts():
    scores = torch.tensor([[0.1, 0.9, 0.3]])
    assert recall_at_k(scores, torch.tensor([[True, False, True]]), ks=(1, 2))[1] == 0.0
    assert recall_at_k(scores, torch.tensor([[True, True, False]]), ks=(1,))[1] == 1.0
    # A query without any positive never counts as a hit.
    assert recall_at_k(scores, torch.tensor([[False, False, False]]), ks=(3,))[3] == 0.0


def test_ties_resolved_by_gallery_order():
    scores = torch.tensor([[0.5, 0.5]])
    assert recall_at_k(scores, torch.tensor([[False, True]]), ks=(1,))[1] == 0.0
    assert recall_at_k(scores, torch.tensor([[True, False]]), ks=(1,))[1] == 1.0


def test_both_directions():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # texts 1 and 2 swapped
    pos = torch.eye(3, dtype=torch.bool)
    r = retrieval(img, txt, pos, ks=(1,))
    third = pytest.approx(1 / 3, abs=count_mean_bound(1 / 3))  # a float32 mean of hits
    assert r["i2t_R@1"] == third and r["t2i_R@1"] == third
