"""RaFA and geodesic multi-modal mixup against naive loops; their per-step seeding."""

import math

import numpy as np
import pytest
import torch

from clipforge.losses import Features, get_loss, mixup_loss, rafa_loss
from clipforge.losses.mixup import slerp
from tests.losses.naive import dot, emb, lse
from tests.tolerance import reorder_bound, softmax_loss_bound


def _cfg(**kw):
    return type("C", (), kw)()


def test_rafa_matches_naive_loop():
    img, txt, refs = emb(2), emb(3, seed=1), emb(2, seed=2)
    owner = [0, 1, -1]
    sq = lambda u, v: sum((a - b) ** 2 for a, b in zip(u, v, strict=True))  # noqa: E731
    li = sum(sq(img[i].tolist(), refs[i].tolist()) for i in range(2)) / 2
    lt = sum(sq(txt[j].tolist(), refs[owner[j]].tolist()) for j in range(2)) / 2
    got = rafa_loss(img, txt, refs, torch.tensor(owner))
    # ||x - r||^2 of unit rows (<= 4): a difference and a square per entry (the square
    # doubles the difference's error), 6 summed, a mean over 2, the two averaged.
    assert got.item() == pytest.approx((li + lt) / 2, abs=reorder_bound(6 + 3 + 2 + 1, 4.0))


def test_rafa_draws_fresh_references_per_step_reproducibly():
    a, b = get_loss("rafa").build(_cfg(seed=3)), get_loss("rafa").build(_cfg(seed=3))
    f = Features(emb(4), emb(4, seed=1), torch.tensor(1.0))
    first = a(f).item()
    assert a(f).item() == first  # same step, same draw (every micro-batch of a step)
    a.after_step(None)
    assert a(f).item() != first
    b.load_state_dict(a.state_dict())  # what a resume does
    assert b(f).item() == a(f).item()


def _sin_theta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1 - (x * y).sum(1).double() ** 2).sqrt()


def _slerp_terms(x: torch.Tensor, y: torch.Tensor) -> float:
    """Roundings (in eps) behind ``||slerp(x, y, lam)|| - 1`` of float32 unit rows.

    In units of u = eps / 2: the rows are unit to ``d / 2 + 2`` (normalised in float32), so
    cos is off by ``d + 2 (d / 2 + 2)``; acos divides that by sin(theta) and adds pi; the
    three sines (argument, product, sine: ``2 pi + 1`` each) move the norm by their errors
    over sin(theta), so does the mix (``3 x 2``); then the division, the rows' own norms
    and measuring the norm (``d + 4``). ``(4 d + 8) / s^2 + 34.2 / s + d + 4`` in u."""
    d, s = x.shape[1], float(_sin_theta(x, y).min())
    return (2 * d + 4) / s**2 + 18 / s + d / 2 + 2


def test_slerp_stays_on_the_sphere_and_hits_the_ends():
    x, y = emb(3), emb(3, seed=1)
    tol = reorder_bound(_slerp_terms(x, y), 1.0)  # sin(theta) >= 0.77 here: 55 terms
    for lam in (0.0, 0.3, 1.0):
        m = slerp(x, y, lam)
        assert torch.allclose(m.norm(dim=1), torch.ones(3), rtol=0, atol=tol)
    # At an end one sine is sin(0) = 0 and the other sin(theta) itself: m = sin(theta) x
    # / sin(theta), two roundings of entries <= 1.
    assert torch.allclose(slerp(x, y, 0.0), x, rtol=0, atol=reorder_bound(2, 1.0))
    assert torch.allclose(slerp(x, y, 1.0), y, rtol=0, atol=reorder_bound(2, 1.0))
    # Halfway: equal angle to both ends. Both sines are one number, so h = k (x + y) with
    # k = 1 / (2 cos(theta / 2)) and h.x - h.y = k (|x|^2 - |y|^2) exactly: the rows'
    # squared norms (2 d + 8 in u), the mix's four roundings of |x| + |y| <= 2 against
    # |x - y| <= 2 (16 in u), each times k; and the two dots of 6 terms (2 x 6 in u).
    h = slerp(x, y, 0.5)
    theta = torch.acos((x * y).sum(1).double())
    k = float((1 / (2 * torch.cos(theta / 2))).max())
    tol = reorder_bound((2 * 6 + k * (2 * 6 + 8 + 16)) / 2, 1.0)
    assert torch.allclose((h * x).sum(1), (h * y).sum(1), rtol=0, atol=tol)


def _naive_slerp(u, v, lam):
    th = math.acos(dot(u, v))
    return [(math.sin((1 - lam) * th) * a + math.sin(lam * th) * b) / math.sin(th)
            for a, b in zip(u, v, strict=True)]  # fmt: skip


def test_mixup_matches_naive_loop():
    img, txt = emb(3), emb(4, seed=1)
    owner, s, lam = [0, 1, 2, -1], 3.0, 0.4
    X, Y = img.tolist(), txt.tolist()
    M = [_naive_slerp(X[k], Y[k], lam) for k in range(3)]
    i2t = []
    for i in range(3):
        row = [s * dot(X[i], y) for y in Y] + [s * dot(X[i], m) for m in M]
        i2t.append(lse(row) - s * dot(X[i], Y[i]))
    t2i = []
    for j in range(3):
        col = [s * dot(Y[j], x) for x in X] + [s * dot(Y[j], m) for m in M]
        t2i.append(lse(col) - s * dot(Y[j], X[j]))
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = mixup_loss(img, txt, torch.tensor(s), lam, owner=torch.tensor(owner))
    # A logit against a mix carries the mix's error (the slerp bound, as extra products);
    # softmaxes over 4 texts + 3 mixes and 3 images + 3 mixes; positives averaged (4 + 1).
    # 1.3e-4; mixing with lam and 1 - lam swapped moves the loss by 4e-3.
    dim = 6 + math.ceil(_slerp_terms(img, txt[:3]))
    tol = softmax_loss_bound(dim, 4 + 3, 3, s, extra_terms=4 + 1)
    assert got.item() == pytest.approx(expected, abs=tol)


def test_mixup_ratio_is_beta_seeded_by_step():
    obj = get_loss("mixup").build(_cfg(seed=1, mixup_alpha=0.5))
    r0 = obj.ratio()
    assert r0 == np.random.default_rng([1, 0]).beta(0.5, 0.5)
    obj.after_step(None)
    assert obj.ratio() != r0 and 0 <= obj.ratio() <= 1
