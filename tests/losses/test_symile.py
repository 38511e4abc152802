"""Symile against a naive loop."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, get_loss, symile_loss
from tests.losses.naive import emb, lse
from tests.tolerance import softmax_loss_bound


def _mip(u, v, w):
    return sum(a * b * c for a, b, c in zip(u, v, w, strict=True))


def test_symile_matches_naive_loop():
    A, B, C = emb(4).tolist(), emb(4, seed=1).tolist(), emb(4, seed=2).tolist()
    s, n = 6.0, 4
    terms = []
    # One modality at a time is the candidate; the other two stay those of sample i.
    for cand, (p, q) in ((A, (B, C)), (B, (A, C)), (C, (A, B))):
        per = []
        for i in range(n):
            scores = [s * _mip(cand[j], p[i], q[i]) for j in range(n)]
            per.append(lse(scores) - scores[i])
        terms.append(sum(per) / n)
    expected = sum(terms) / 3
    got = symile_loss(emb(4), emb(4, seed=1), emb(4, seed=2), torch.tensor(s))
    # A score: the elementwise product of two unit rows (one rounding more per term) and a
    # dot with a third, sum|a b c| <= 1; three directions averaged (3 more).
    tol = softmax_loss_bound(dim=6 + 1, columns=4, rows=4, scale=s, extra_terms=3)
    assert got.item() == pytest.approx(expected, abs=tol)


def test_symile_objective_owns_the_third_view_encoder():
    cfg = type("C", (), {"symile_categories": 5, "model": "tiny", "model_args": {"embed_dim": 8}})()
    obj = get_loss("symile").build(cfg)
    assert obj.batch_keys == ("third",)
    assert all(p.requires_grad for p in obj.parameters())
    third = torch.tensor([0, 4, 2])
    f = Features(emb(3, 8), emb(3, 8, seed=1), torch.tensor(5.0), extra={"third": third})
    expected = symile_loss(f.image, f.text, obj.third(third), f.scale)
    # The same loss, but obj(f) embeds the third view again: its Linear (64 products and
    # the GELU before them, sum|w h| + |b| up to `gain` times the output) and normalising
    # it (8 + 2) may round otherwise, as more products of each score.
    with torch.no_grad():
        h = torch.nn.functional.gelu(obj.third.embed(third))
        lin = obj.third.proj[1]
        sums = h.abs() @ lin.weight.abs().T + lin.bias.abs()
        gain = float((sums.norm(dim=1) / lin(h).norm(dim=1)).max())
    dim = 8 + 1 + math.ceil((64 + 2) * gain + 8 + 2)
    tol = softmax_loss_bound(dim, columns=3, rows=3, scale=5.0, extra_terms=3)
    assert obj(f).item() == pytest.approx(expected.item(), abs=tol)
    with pytest.raises(ClipforgeError, match="out of range"):
        obj(f.replace(extra={"third": torch.tensor([0, 5, 1])}))
    with pytest.raises(ClipforgeError, match="one caption per image"):
        obj(f.replace(owner=torch.arange(3)))


@pytest.mark.slow
def test_symile_solves_the_xor_world_where_pairwise_clip_cannot():
    from experiments.symile_xor import compare, parser

    res = compare(parser().parse_args(["--train", "2000", "--test", "500", "--steps", "400"]))
    assert res["symile"]["test_acc"] > 0.6
    assert res["pairwise_clip"]["test_acc"] < res["chance"] + 0.06
