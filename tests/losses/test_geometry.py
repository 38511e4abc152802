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
    assert got.item() == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert alignment_loss(img, img).item() == pytest.approx(0.0, abs=1e-7)


def test_uniformity_matches_naive_loop():
    img, txt = emb(4), emb(5, seed=1)
    owner = [0, 1, 2, 3, -1]  # the hard negative is left out
    expected = (_naive_uniformity(img.tolist()) + _naive_uniformity(txt[:4].tolist())) / 2
    got = uniformity_loss(img, txt, torch.tensor(owner))
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # All points equal: every distance 0, the maximum value log 1 = 0.
    same = torch.nn.functional.normalize(torch.ones(3, 4), dim=-1)
    assert uniformity_loss(same, same).item() == pytest.approx(0.0, abs=1e-6)


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
    expected = (
        clip_loss(img, txt, s) + 0.1 * uniformity_loss(img, txt) + 0.2 * alignment_loss(img, txt)
    )
    assert obj(Features(img, txt, s)).item() == pytest.approx(expected.item(), abs=1e-6)
    assert set(obj.metrics()) == {"loss/clip", "loss/uniformity", "loss/alignment"}
    assert obj.metrics()["loss/alignment"] == pytest.approx(alignment_loss(img, txt).item())
