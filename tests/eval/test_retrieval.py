import pytest
import torch

from clipforge.eval.retrieval import recall_at_k, retrieval


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
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


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
    assert r["i2t_R@1"] == pytest.approx(1 / 3) and r["t2i_R@1"] == pytest.approx(1 / 3)
