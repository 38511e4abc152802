import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.losses import LOSSES, clip_loss, get_loss
from tests.tolerance import printed_bound, softmax_loss_bound


def test_identity_pairs_hand_value():
    # logits = I: each row's CE is log(1 + e^-1) = 0.3132617, in both directions.
    eye = torch.eye(2)
    loss = clip_loss(eye, eye, torch.tensor(1.0))
    tol = softmax_loss_bound(dim=2, columns=2, rows=2, scale=1.0)  # exact inputs
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=tol)
    assert loss.item() == pytest.approx(0.3132617, abs=tol + printed_bound(7))


def test_asymmetric_matrix_hand_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    s = 2.0
    # logits = s * img @ txt.T = [[1.2, 2.0], [1.6, 0.0]]
    lse = lambda a, b: math.log(math.exp(a) + math.exp(b))  # noqa: E731
    i2t = (lse(1.2, 2.0) - 1.2) + (lse(1.6, 0.0) - 0.0)
    t2i = (lse(1.2, 1.6) - 1.2) + (lse(2.0, 0.0) - 0.0)
    expected = (i2t + t2i) / 4
    got = clip_loss(img, txt, torch.tensor(s))
    # 0.6 and 0.8 are rounded to float32; the hand value reads them exactly.
    tol = softmax_loss_bound(dim=2, columns=2, rows=2, scale=s, decimal_inputs=True)
    assert got.item() == pytest.approx(expected, abs=tol)
    assert got.item() == pytest.approx(1.4987362, abs=tol + printed_bound(7))


def test_matches_naive_loop_and_weights():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    s = torch.tensor(7.0)
    logits = (s * img @ txt.T).tolist()
    per = []
    for i in range(5):
        row = -logits[i][i] + math.log(sum(math.exp(v) for v in logits[i]))
        col = -logits[i][i] + math.log(sum(math.exp(logits[j][i]) for j in range(5)))
        per.append((row + col) / 2)
    tol = softmax_loss_bound(dim=8, columns=5, rows=5, scale=7.0)  # the loop: float64
    assert clip_loss(img, txt, s).item() == pytest.approx(sum(per) / 5, abs=tol)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    tol = softmax_loss_bound(dim=8, columns=5, rows=5, scale=7.0, weighted=True)
    assert clip_loss(img, txt, s, weights=w).item() == pytest.approx((per[0] + per[4]) / 2, abs=tol)


def test_gradient_reaches_scale():
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    t = torch.tensor(1.0, requires_grad=True)
    clip_loss(img, txt, t.exp()).backward()
    assert t.grad is not None and t.grad.abs().item() > 0


def test_registry():
    assert {"clip", "siglip"} <= set(LOSSES.names())
    assert get_loss("clip").init_logit_bias is None
    with pytest.raises(ClipforgeError, match="unknown loss 'nope'"):
        get_loss("nope")
