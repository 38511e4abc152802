"""Alignment and uniformity (Wang & Isola) against naive loops, and loss expressions."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import (
    Features,
    alignment_loss,
    clip_loss,
    get_loss,
    parse_expression,
    uniformity_loss,
)
from tests.losses.naive import emb
from tests.tolerance import reorder_bound, softmax_loss_bound


def _alignment_bound(dim: int, pairs: int) -> float:
    """Mean of ``||x - y||^2`` over unit rows: a difference and a square per entry (the
    square doubles the difference's error), ``dim`` of them summed, a mean over ``pairs``;
    every value is at most ``||x - y||^2 <= 4``."""
    return reorder_bound(dim + 3 + pairs, 4.0)


def _uniformity_bound(dim: int, n: int) -> float:
    """``log mean exp(-2 ||x_i - x_j||^2)`` with ``||x_i - x_j||^2 = 2 - 2 x_i.x_j``: ``dim``
    products and two roundings; the formula takes float32 rows for unit ones, which they
    are to ``dim + 4`` roundings (normalised, then read at face value by the loop): twice
    that; then the factor -2, a log-sum-exp over the ``n (n - 1) / 2`` pairs (``+ 4``), the
    log of their count subtracted and the two modalities averaged. Values up to 2 x 4."""
    pairs = n * (n - 1) // 2
    return reorder_bound(dim + 2 + 2 * (dim + 4) + 1 + pairs + 4 + 2 + 1, 8.0)


def _sqdist(u, v):
    return sum((a - b) ** 2 for a, b in zip(u, v, strict=True))


def _naive_uniformity(X):
    vals = [math.exp(-2 * _sqdist(X[i], X[j])) for i in range(len(X)) for j in range(i + 1, len(X))]
    return math.log(sum(vals) / len(vals))


def test_alignment_matches_naive_loop():
    img, txt = emb(3), emb(5, seed=1)
    owner = [0, 0, 1, 2, -1]
    pairs = [_sqdist(img[o].tolist(), txt[j].tolist()) for j, o in enumerate(owner) if o >= 0]
    got = alignment_loss(img, txt, torch.tensor(owner))
    assert got.item() == pytest.approx(sum(pairs) / len(pairs), abs=_alignment_bound(6, 4))
    assert alignment_loss(img, img).item() == 0.0  # x - x is exactly 0: nothing rounds


def test_uniformity_matches_naive_loop():
    img, txt = emb(4), emb(5, seed=1)
    owner = [0, 1, 2, 3, -1]  # the hard negative is left out
    expected = (_naive_uniformity(img.tolist()) + _naive_uniformity(txt[:4].tolist())) / 2
    got = uniformity_loss(img, txt, torch.tensor(owner))
    assert got.item() == pytest.approx(expected, abs=_uniformity_bound(6, 4))
    # All points equal: every distance 0, the maximum value log 1 = 0. The rows are exactly
    # (1/2, ..., 1/2), so the distances are exactly 0 and only the log-sum-exp of 3 zeros
    # and log 3 round: 3 + 4 + 1 roundings at log 3.
    same = torch.nn.functional.normalize(torch.ones(3, 4), dim=-1)
    assert uniformity_loss(same, same).item() == pytest.approx(
        0.0, abs=reorder_bound(8, math.log(3))
    )


def test_parse_expression():
    assert parse_expression("clip+0.1*uniformity + 2e-1*alignment") == [
        (1.0, "clip"),
        (0.1, "uniformity"),
        (0.2, "alignment"),
    ]
    for bad, msg in (
        ("clip+", "cannot read term"),
        ("x*clip", "not a number"),
        ("clip+clip", "twice"),
        ("0.1*", "cannot read term"),
    ):
        with pytest.raises(ClipforgeError, match=msg):
            parse_expression(bad)
    with pytest.raises(ClipforgeError, match="unknown loss 'nosuch'.*known:.*uniformity"):
        get_loss("clip+0.5*nosuch")


def test_expression_is_the_weighted_sum_and_takes_the_contrastive_init():
    spec = get_loss("0.1*uniformity+siglip+0.2*alignment")
    assert spec.init_logit_bias == -10.0 and spec.init_logit_scale == pytest.approx(math.log(10))
    clip_spec = get_loss("clip+0.1*uniformity+0.2*alignment")
    assert clip_spec.init_logit_bias is None
    obj = clip_spec.build(type("C", (), {})())
    img, txt, s = emb(4), emb(4, seed=1), torch.tensor(5.0)
    terms = clip_loss(img, txt, s), uniformity_loss(img, txt), alignment_loss(img, txt)
    expected = terms[0] + 0.1 * terms[1] + 0.2 * terms[2]
    # The same three losses on the same tensors (at most other evaluation orders), and the
    # weighted sum: two weights rounded to float32, two products, two sums.
    tol = (
        softmax_loss_bound(dim=6, columns=4, rows=4, scale=5.0)
        + 0.1 * _uniformity_bound(6, 4)
        + 0.2 * _alignment_bound(6, 4)
        + reorder_bound(
            6, sum(w * abs(t.item()) for w, t in zip((1, 0.1, 0.2), terms, strict=True))
        )
    )
    assert obj(Features(img, txt, s)).item() == pytest.approx(expected.item(), abs=tol)
    assert set(obj.metrics()) == {"loss/clip", "loss/uniformity", "loss/alignment"}
    alignment = alignment_loss(img, txt).item()
    assert obj.metrics()["loss/alignment"] == pytest.approx(alignment, abs=_alignment_bound(6, 4))
