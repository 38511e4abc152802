"""RaFA and geodesic multi-modal mixup against naive loops; their per-step seeding."""

import math

import numpy as np
import pytest
import torch

from clipforge.losses import Features, get_loss, mixup_loss, rafa_loss
from clipforge.losses.mixup import slerp
from tests.losses.naive import dot, emb, lse


def _cfg(**kw):
    return type("C", (), kw)()


def test_rafa_matches_naive_loop():
    img, txt, refs = emb(2), emb(3, seed=1), emb(2, seed=2)
    owner = [0, 1, -1]
    sq = lambda u, v: sum((a - b) ** 2 for a, b in zip(u, v, strict=True))  # noqa: E731
    li = sum(sq(img[i].tolist(), refs[i].tolist()) for i in range(2)) / 2
    lt = sum(sq(txt[j].tolist(), refs[owner[j]].tolist()) for j in range(2)) / 2
    got = rafa_loss(img, txt, refs, torch.tensor(owner))
    assert got.item() == pytest.approx((li + lt) / 2, abs=1e-6)


def test_rafa_draws_fresh_references_per_step_reproducibly():
    a, b = get_loss("rafa").build(_cfg(seed=3)), get_loss("rafa").build(_cfg(seed=3))
    f = Features(emb(4), emb(4, seed=1), torch.tensor(1.0))
    first = a(f).item()
    assert a(f).item() == first  # same step, same draw (every micro-batch of a step)
    a.after_step(None)
    assert a(f).item() != first
    b.load_state_dict(a.state_dict())  # what a resume does
    assert b(f).item() == a(f).item()


def test_slerp_stays_on_the_sphere_and_hits_the_ends():
    x, y = emb(3), emb(3, seed=1)
    for lam in (0.0, 0.3, 1.0):
        m = slerp(x, y, lam)
        assert torch.allclose(m.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(slerp(x, y, 0.0), x, atol=1e-5)
    assert torch.allclose(slerp(x, y, 1.0), y, atol=1e-5)
    # Halfway: equal angle to both ends.
    h = slerp(x, y, 0.5)
    assert torch.allclose((h * x).sum(1), (h * y).sum(1), atol=1e-5)


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
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_mixup_ratio_is_beta_seeded_by_step():
    obj = get_loss("mixup").build(_cfg(seed=1, mixup_alpha=0.5))
    r0 = obj.ratio()
    assert r0 == np.random.default_rng([1, 0]).beta(0.5, 0.5)
    obj.after_step(None)
    assert obj.ratio() != r0 and 0 <= obj.ratio() <= 1
