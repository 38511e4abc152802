"""CWCL against a naive loop, and its reference tower."""

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, cwcl_loss, get_loss
from clipforge.losses.towers import embed
from tests.losses.naive import dot, emb, lse
from tests.tolerance import softmax_loss_bound


def _cwcl_bound(b: int, t: int, dim: int, ref_dim: int, scale: float) -> float:
    """The softmax chain, and the soft targets: each weight (1 + r.r') / 2 is ``ref_dim``
    products and two roundings, and weighs a log-probability (at most the chain's
    magnitude) in a sum over the ``max(b, t)`` columns; that sum, the weights' sum (the
    normaliser), a caption average and the division add ``3 max(b, t) + 2``."""
    n = max(b, t)
    extra = n * (ref_dim + 2) + 3 * n + 2
    return softmax_loss_bound(dim, n, n, scale, extra_terms=extra)


def _naive(X, Y, RX, RY, s, owner):
    b, t = len(X), len(Y)
    L = [[s * dot(X[i], Y[j]) for j in range(t)] for i in range(b)]
    i2t = []
    for i in range(b):
        pos = [p for p in range(t) if owner[p] == i]
        w = [sum((1 + dot(RY[p], RY[j])) / 2 for p in pos) / len(pos) for j in range(t)]
        row = [L[i][j] - lse(L[i]) for j in range(t)]
        i2t.append(-sum(wj * r for wj, r in zip(w, row, strict=True)) / sum(w))
    t2i = []
    for j in range(t):
        col = [L[k][j] for k in range(b)]
        w = [(1 + dot(RX[owner[j]], RX[k])) / 2 for k in range(b)]
        t2i.append(-sum(w[k] * (col[k] - lse(col)) for k in range(b)) / sum(w))
    return (sum(i2t) / b + sum(t2i) / t) / 2


def test_cwcl_matches_naive_loop():
    img, txt, rimg, rtxt = emb(4), emb(4, seed=1), emb(4, 5, seed=2), emb(4, 5, seed=3)
    got = cwcl_loss(img, txt, torch.tensor(3.0), rimg, rtxt)
    expected = _naive(img.tolist(), txt.tolist(), rimg.tolist(), rtxt.tolist(), 3.0, range(4))
    assert got.item() == pytest.approx(expected, abs=_cwcl_bound(4, 4, 6, 5, 3.0))


def test_cwcl_several_captions_matches_naive_loop():
    img, txt, rimg, rtxt = emb(3), emb(5, seed=1), emb(3, seed=2), emb(5, seed=3)
    owner = [0, 1, 1, 2, 0]
    got = cwcl_loss(img, txt, torch.tensor(2.0), rimg, rtxt, owner=torch.tensor(owner))
    expected = _naive(img.tolist(), txt.tolist(), rimg.tolist(), rtxt.tolist(), 2.0, owner)
    assert got.item() == pytest.approx(expected, abs=_cwcl_bound(3, 5, 6, 6, 2.0))


def test_cwcl_with_antipodal_reference_is_clip():
    # Two samples whose references are opposite: off-diagonal weights (1 + cos) / 2 = 0.
    from clipforge.losses import clip_loss

    img, txt = emb(2), emb(2, seed=1)
    ref = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    s = torch.tensor(4.0)
    # The weights are exactly 0 and 1 here: two float32 evaluations of one softmax loss.
    tol = softmax_loss_bound(dim=6, columns=2, rows=2, scale=4.0, extra_terms=2 * 2 + 2)
    assert cwcl_loss(img, txt, s, ref, ref).item() == pytest.approx(
        clip_loss(img, txt, s).item(), abs=tol
    )


def test_cwcl_objective_reads_reference_checkpoint(micro_checkpoint):
    cfg = type("C", (), {"reference": str(micro_checkpoint)})()
    obj = get_loss("cwcl").build(cfg)
    assert not any(p.requires_grad for p in obj.parameters())
    images = torch.randn(3, 3, 16, 16)
    tokens = torch.zeros(3, 10, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 5, 49407  # a word and the end token (highest id)
    extra = obj.prepare(images, tokens)
    assert extra["ref_image"].shape == (3, 32) and extra["text_ref"].shape == (3, 32)
    ref_img, _ = embed(obj.reference, images, tokens)
    assert torch.equal(extra["ref_image"], ref_img)
    f = Features(emb(3, 32), emb(3, 32, seed=1), torch.tensor(5.0), extra=extra)
    expected = cwcl_loss(f.image, f.text, f.scale, extra["ref_image"], extra["text_ref"])
    # The same loss on the same tensors: at most another evaluation order.
    assert obj(f).item() == pytest.approx(expected.item(), abs=_cwcl_bound(3, 3, 32, 32, 5.0))
    with pytest.raises(ClipforgeError, match="hard-negatives"):
        obj(f.replace(text=emb(4, 32), owner=torch.tensor([0, 1, 2, -1]),
                      extra={**extra, "text_ref": emb(4, 32)}))  # fmt: skip


def test_cwcl_needs_a_reference(tmp_path):
    with pytest.raises(ClipforgeError, match="--reference"):
        get_loss("cwcl").build(type("C", (), {"reference": None})())
    with pytest.raises(ClipforgeError, match="not found"):
        get_loss("cwcl").build(type("C", (), {"reference": str(tmp_path / "nope.pt")})())
