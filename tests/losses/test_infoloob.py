"""InfoLOOB and CLOOB against naive loops."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, cloob_loss, get_loss, infoloob_loss
from tests.losses.naive import dot, emb, lse, unit
from tests.tolerance import softmax_loss_bound


def _naive_loob(X, Y, s, owner):
    b, t = len(X), len(Y)
    i2t = []
    for i in range(b):
        pos = [j for j in range(t) if owner[j] == i]
        neg = [s * dot(X[i], Y[j]) for j in range(t) if owner[j] != i]
        i2t.append(sum(lse(neg) - s * dot(X[i], Y[j]) for j in pos) / len(pos))
    t2i = []
    for j in range(t):
        if owner[j] < 0:
            continue
        neg = [s * dot(X[k], Y[j]) for k in range(b) if k != owner[j]]
        t2i.append(lse(neg) - s * dot(X[owner[j]], Y[j]))
    return (sum(i2t) / len(i2t) + sum(t2i) / len(t2i)) / 2


def test_infoloob_matches_naive_loop():
    img, txt = emb(4), emb(4, seed=1)
    got = infoloob_loss(img, txt, torch.tensor(3.0))
    tol = softmax_loss_bound(dim=6, columns=4, rows=4, scale=3.0)  # the loop: float64
    assert got.item() == pytest.approx(
        _naive_loob(img.tolist(), txt.tolist(), 3.0, range(4)), abs=tol
    )


def test_infoloob_owner_matches_naive_loop():
    img, txt = emb(3), emb(6, seed=2)
    owner = [0, 0, 1, 2, -1, -1]  # image 0 has two captions, two hard negatives
    got = infoloob_loss(img, txt, torch.tensor(2.5), owner=torch.tensor(owner))
    # Two positives averaged: a sum over the 6 columns and a division more.
    tol = softmax_loss_bound(dim=6, columns=6, rows=6, scale=2.5, extra_terms=6 + 1)
    assert got.item() == pytest.approx(_naive_loob(img.tolist(), txt.tolist(), 2.5, owner), abs=tol)


def test_infoloob_differs_from_infonce_by_the_positive():
    # Two images: the denominator holds only the other pair, so the value is closed-form.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = 2.0
    # x0.y0 = 1, x0.y1 = 0.6, x1.y0 = 0, x1.y1 = 0.8: each denominator is one exp.
    i2t = [s * 0.6 - s * 1.0, s * 0.0 - s * 0.8]
    t2i = [s * 0.0 - s * 1.0, s * 0.6 - s * 0.8]
    expected = (sum(i2t) / 2 + sum(t2i) / 2) / 2
    # 0.6 and 0.8 are rounded to float32; the closed form reads them exactly.
    tol = softmax_loss_bound(dim=2, columns=2, rows=2, scale=s, decimal_inputs=True)
    assert infoloob_loss(img, txt, torch.tensor(s)).item() == pytest.approx(expected, abs=tol)


def _retrieve(q, P, beta):
    w = [math.exp(beta * dot(q, p)) for p in P]
    z = sum(w)
    return unit([sum(w[k] * P[k][d] for k in range(len(P))) / z for d in range(len(q))])


def test_cloob_matches_naive_hopfield_loop():
    # float64: a retrieval's rounding is divided by the norm of the softmax-weighted mean
    # it normalises, and the chain is long; in float32 the bound is ~1e-3, within 7x of
    # what a beta 1% off does to the loss (6e-3). In float64 it is ~1e-11.
    img, txt = emb(4).double(), emb(4, seed=3).double()
    X, Y, beta, s = img.tolist(), txt.tolist(), 5.0, 4.0
    u_x = [_retrieve(x, X, beta) for x in X]
    u_y = [_retrieve(y, X, beta) for y in Y]
    v_x = [_retrieve(x, Y, beta) for x in X]
    v_y = [_retrieve(y, Y, beta) for y in Y]
    expected = (_naive_loob(u_x, u_y, s, range(4)) + _naive_loob(v_x, v_y, s, range(4))) / 2
    got = cloob_loss(img, txt, torch.tensor(s, dtype=torch.float64), beta)
    assert got.dtype == torch.float64
    # Each retrieved row: beta q.p over 6 dims and beta (2 x 7 at beta: a logit enters its
    # softmax twice), the softmax over 4 (8, and 2 beta from logit - max), the mean of 4
    # patterns, 6 + 3 to normalise, all divided by the mean's norm (>= 0.6 for these rows,
    # allowed 0.1: x 10); two rows per logit, then the InfoLOOB chain with s = 4.
    retrieval = (16 * beta + 21) * 10
    tol = softmax_loss_bound(6 + 2 * retrieval, 4, 4, s, dtype=torch.float64)
    assert got.item() == pytest.approx(expected, abs=tol)


def test_objective_fixes_the_temperature_and_rejects_hopfield_with_negatives():
    cfg = type("C", (), {"hopfield_beta": 8.0})()
    obj = get_loss("infoloob").build(cfg)
    assert get_loss("infoloob").init_logit_scale == pytest.approx(math.log(30))
    t = torch.tensor(math.log(30.0), requires_grad=True)
    img = emb(4).requires_grad_()
    obj(Features(img, emb(4, seed=1), t.exp())).backward()
    assert img.grad is not None
    assert t.grad is None or t.grad == 0
    owner = torch.tensor([0, 1, 2, 3, -1])
    with pytest.raises(ClipforgeError, match="hard-negatives"):
        obj(Features(emb(4), emb(5, seed=1), t.exp(), owner=owner))
    # Without Hopfield, hard negatives are extra denominator columns.
    plain = get_loss("infoloob").build(type("C", (), {"hopfield_beta": 0})())
    assert plain.hopfield_beta is None
    assert torch.isfinite(plain(Features(emb(4), emb(5, seed=1), t.exp(), owner=owner)))
