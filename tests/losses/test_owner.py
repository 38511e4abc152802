"""Several captions per image and hard-negative columns, against naive loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import Features, clip_loss, get_loss, siglip_loss
from tests.tolerance import sigmoid_loss_bound, softmax_loss_bound


def _emb(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def _lse(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def test_clip_owner_matches_naive_loop():
    img, txt = _emb(3), _emb(6, seed=1)
    owner = torch.tensor([0, 0, 1, 2, -1, -1])  # image 0 has two captions, two hard negatives
    s, w = 5.0, 3.0
    L = (s * img @ txt.T).tolist()
    for i in range(3):
        for j in (4, 5):
            L[i][j] += math.log(w)
    i2t = []
    for i in range(3):
        pos = [j for j in range(6) if owner[j] == i]
        i2t.append(sum(_lse(L[i]) - L[i][j] for j in pos) / len(pos))
    t2i = [_lse([L[k][j] for k in range(3)]) - L[int(owner[j])][j] for j in range(4)]
    expected = (sum(i2t) / 3 + sum(t2i) / 4) / 2
    got = clip_loss(img, txt, torch.tensor(s), owner=owner, hard_weight=w)
    # Logits up to s + log w; log w rounded and added (2), two positives averaged (6 + 1).
    tol = softmax_loss_bound(6, 6, 4, s + math.log(w), extra_terms=2 + 6 + 1)
    assert got.item() == pytest.approx(expected, abs=tol)


def test_clip_owner_identity_equals_plain():
    img, txt = _emb(4), _emb(4, seed=2)
    s = torch.tensor(3.0)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    plain = clip_loss(img, txt, s, weights=w)
    mapped = clip_loss(img, txt, s, weights=w, owner=torch.arange(4))
    # Two float32 evaluations; the owner path sums log-probabilities over positives (4 + 1).
    tol = softmax_loss_bound(6, 4, 4, 3.0, weighted=True, extra_terms=4 + 1)
    assert mapped.item() == pytest.approx(plain.item(), abs=tol)


def test_hard_negatives_raise_the_loss_and_weight_scales_them():
    img, txt = _emb(3), _emb(3, seed=3)
    neg = img.clone()  # negatives identical to the images: as hard as it gets
    both = torch.cat([txt, neg])
    owner = torch.tensor([0, 1, 2, -1, -1, -1])
    s = torch.tensor(4.0)
    base = clip_loss(img, txt, s).item()
    hard = clip_loss(img, both, s, owner=owner).item()
    harder = clip_loss(img, both, s, owner=owner, hard_weight=4.0).item()
    assert base < hard < harder
    # t2i rows exclude negative columns: with zero-weight negatives the loss is the plain one.
    # A 1e-30-weighted column adds at most e^(2 s) 1e-30 ~ 3e-27 to a log-sum-exp: nothing;
    # what is left is two float32 evaluations (the owner path: 6 + 1 more).
    tol = softmax_loss_bound(6, 6, 3, 4.0, extra_terms=6 + 1)
    near_zero = clip_loss(img, both, s, owner=owner, hard_weight=1e-30).item()
    assert near_zero == pytest.approx(base, abs=tol)


def test_image_without_positive_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        clip_loss(_emb(2), _emb(2), torch.tensor(1.0), owner=torch.tensor([0, -1]))


def test_siglip_owner_matches_naive_loop():
    img, txt = _emb(2), _emb(4, seed=4)
    owner = torch.tensor([0, 1, 1, -1])
    s, b = 3.0, -1.5
    L = (s * img @ txt.T + b).tolist()
    total = 0.0
    for i in range(2):
        for j in range(4):
            z = 1.0 if owner[j] == i else -1.0
            total += math.log(1 + math.exp(-z * L[i][j]))
    got = siglip_loss(img, txt, torch.tensor(s), torch.tensor(b), owner=owner)
    tol = sigmoid_loss_bound(6, 4, 2, s, b, total / 2)  # the loop: float64 on float32 logits
    assert got.item() == pytest.approx(total / 2, abs=tol)


def test_objectives_read_features():
    img, txt = _emb(3), _emb(3, seed=5)
    f = Features(img, txt, torch.tensor(2.0), torch.tensor(-1.0))
    # Each objective against its function on the same tensors: another evaluation at most.
    clip = clip_loss(img, txt, torch.tensor(2.0), torch.tensor(-1.0)).item()
    tol = softmax_loss_bound(6, 3, 3, 2.0 + 1.0, extra_terms=1)  # |logit| <= s + |b|
    assert get_loss("clip").build(None)(f).item() == pytest.approx(clip, abs=tol)
    siglip = siglip_loss(img, txt, torch.tensor(2.0), torch.tensor(-1.0)).item()
    tol = sigmoid_loss_bound(6, 3, 3, 2.0, -1.0, siglip)
    assert get_loss("siglip").build(None)(f).item() == pytest.approx(siglip, abs=tol)
    assert f.positives().equal(torch.eye(3, dtype=torch.bool))
