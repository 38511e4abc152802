import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import get_loss, siglip_loss
from tests.tolerance import printed_bound, sigmoid_loss_bound


def test_identity_hand_value():
    # logits = I: two positives at 1 (log(1+e^-1) each), two negatives at 0 (log 2 each), / B.
    eye = torch.eye(2)
    got = siglip_loss(eye, eye, torch.tensor(1.0), torch.tensor(0.0))
    expected = (2 * math.log(1 + math.exp(-1)) + 2 * math.log(2)) / 2
    tol = sigmoid_loss_bound(2, 2, 2, 1.0, 0.0, expected)  # exact inputs
    assert got.item() == pytest.approx(expected, abs=tol)
    assert got.item() == pytest.approx(1.0064089, abs=tol + printed_bound(7))


def test_bias_and_scale_hand_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    s, b = 3.0, -1.0
    sp = lambda x: math.log(1 + math.exp(x))  # softplus = -log sigmoid(-x)  # noqa: E731
    # logits = s * img @ txt.T + b = [[0.8, 2.0], [1.4, -1.0]]
    expected = (sp(-0.8) + sp(2.0) + sp(1.4) + sp(1.0)) / 2
    got = siglip_loss(img, txt, torch.tensor(s), torch.tensor(b))
    # 0.6 and 0.8 are rounded to float32; the hand value reads them exactly.
    tol = sigmoid_loss_bound(2, 2, 2, s, b, expected, decimal_inputs=True)
    assert got.item() == pytest.approx(expected, abs=tol)


def test_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    s, b = 10.0, -5.0
    total = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            logit = s * float(img[i] @ txt[j]) + b
            total += math.log(1 + math.exp(-z * logit))
    got = siglip_loss(img, txt, torch.tensor(s), torch.tensor(b))
    tol = sigmoid_loss_bound(4, 6, 6, s, b, total / 6)  # the loop: float64 on float32 dots
    assert got.item() == pytest.approx(total / 6, abs=tol)


def test_needs_bias_and_registry_init():
    with pytest.raises(ValueError, match="logit bias"):
        siglip_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0))
    spec = get_loss("siglip")
    assert spec.init_logit_bias == -10.0
    assert math.exp(spec.init_logit_scale) == pytest.approx(10.0)
