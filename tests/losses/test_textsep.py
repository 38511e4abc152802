"""The text-side separation of captions from their own hard negatives: hand-computed
values, a loop, and its plumbing."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, get_loss
from clipforge.losses.base import NEGATIVE_OF
from clipforge.losses.textsep import TextSepObjective, textsep_loss
from tests.losses.naive import dot, emb, two_steps_on_pairs
from tests.tolerance import reorder_bound


def _hand_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Captions of images 0 and 1, then negatives: two of image 0, one of image 1.
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [0.28, 0.96]])
    owner = torch.tensor([0, 1, -1, -1, -1])
    negative_of = torch.tensor([-1, -1, 0, 1, 0])
    return image, text, owner, negative_of


# A cosine of 2-d rows read from decimals: each factor rounds (the printed constants are
# off by up to half an ulp of float32, so one eps of relative error per factor), two
# products and one sum, then the margin's subtraction and a mean of 3: a few eps of 1.
HAND_TOL = reorder_bound(8, 1.0)


def test_hand_computed_value():
    _, text, _, negative_of = _hand_case()
    m = 0.5
    got = textsep_loss(text, torch.tensor([0, 1]), negative_of, m)
    # Caption 0 against its negatives: cos 0.6 and 0.28; caption 1 against 0.6 (its own
    # negative [0.8, 0.6] scores 0.6 too). Only the two 0.6 pairs exceed the margin.
    want = (max(0.0, 0.6 - m) + max(0.0, 0.28 - m) + max(0.0, 0.6 - m)) / 3
    assert float(got) == pytest.approx(want, abs=HAND_TOL)
    # Below every cosine, all three pairs count; above them, none.
    # With one caption per image the reference is the caption itself (cos 1): a margin of
    # 1 counts every pair, one of 0.3 none.
    low = textsep_loss(text, torch.tensor([0, 1]), negative_of, 1.0)
    assert float(low) == pytest.approx((0.6 + 0.28 + 0.6) / 3, abs=HAND_TOL)
    assert float(textsep_loss(text, torch.tensor([0, 1]), negative_of, 0.3)) == 0.0


def test_paraphrases_are_the_reference():
    # Image 0 has a paraphrase [0.96, 0.28] (cos 0.96 to its caption) and image 1 two,
    # [0.6, 0.8] and [0.8, 0.6] (cos 0.8 and 0.6: mean 0.7); the negatives are as before.
    text = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.96, 0.28], [0.8, 0.6], [0.6, 0.8],
         [0.6, 0.8], [0.8, 0.6], [0.28, 0.96]]
    )  # fmt: skip
    owner = torch.tensor([0, 1, 0, 1, 1, -1, -1, -1])
    negative_of = torch.tensor([-1, -1, -1, -1, -1, 0, 1, 0])
    m = 0.2
    got = textsep_loss(text, torch.tensor([0, 1]), negative_of, m, owner=owner)
    # Image 0: negatives at cos 0.6 and 0.28 against 0.96; image 1: 0.6 against 0.7.
    want = (max(0.0, 0.6 - 0.96 + m) + max(0.0, 0.28 - 0.96 + m) + (0.6 - 0.7 + m)) / 3
    assert float(got) == pytest.approx(want, abs=2 * HAND_TOL)
    # Without the owner map the same batch is read as one caption per image.
    plain = textsep_loss(text, torch.tensor([0, 1]), negative_of, m)
    assert float(plain) == 0.0  # every negative is below 1 - m = 0.8


def test_matches_a_loop_with_weights():
    t, d, m = 9, 6, 1.2
    text = emb(t, d, seed=4)
    positive = torch.tensor([0, 1, 2, 3])
    negative_of = torch.tensor([-1, -1, -1, -1, 0, 1, 0, 3, 0])
    weights = torch.tensor([1.0, 2.0, 5.0, 0.5])
    got = textsep_loss(text, positive, negative_of, m, weights)
    tx = text.tolist()
    terms, ws = [], []
    for j in range(t):
        i = int(negative_of[j])
        if i >= 0:
            terms.append(max(0.0, dot(tx[int(positive[i])], tx[j]) - 1 + m))
            ws.append(float(weights[i]))
    want = sum(w * x for w, x in zip(ws, terms, strict=True)) / sum(ws)
    # Each cosine sums d products of unit rows (d + 1 roundings of terms up to 1); the
    # weighted mean adds 2 * 5 (five weighted terms, each at most 2 + |m| times a weight).
    tol = reorder_bound(d + 2, 1.0) * 3 + reorder_bound(10, (2 + m) * float(weights.max()))
    assert float(got) == pytest.approx(want, abs=tol)


def test_only_the_text_tower_gets_a_gradient_and_no_negatives_is_a_zero():
    image, text, owner, negative_of = _hand_case()
    image = image.clone().requires_grad_()
    text = text.clone().requires_grad_()
    scale = torch.tensor(2.0, requires_grad=True)
    assert get_loss("textsep").build(type("Run", (), {"hard_negatives": "attribute"})())
    obj = TextSepObjective(margin=0.5)  # one caption per image: pairs over cos 0.5 count
    none = torch.full((5,), -1)
    zero = obj(Features(image, text, scale, owner=owner, extra={NEGATIVE_OF: none}))
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert text.grad is not None and float(text.grad.abs().sum()) == 0.0
    loss = obj(Features(image, text, scale, owner=owner, extra={NEGATIVE_OF: negative_of}))
    loss.backward()
    assert float(loss.detach()) > 0 and float(text.grad.abs().sum()) > 0
    assert image.grad is None or float(image.grad.abs().sum()) == 0.0
    assert scale.grad is None
    # d/d t_n of relu(t_p . t_n - m) / 3 is t_p / 3 for a pair over the margin, 0 below it:
    # row 2 (cos 0.6 with caption 0) gets [1, 0] / 3, row 4 (cos 0.28) nothing.
    g = text.grad
    assert g[2].tolist() == pytest.approx([1 / 3, 0.0], abs=reorder_bound(1, 1 / 3))
    assert g[4].abs().sum().item() == 0.0


def test_build_needs_hard_negatives():
    with pytest.raises(ClipforgeError, match="add --hard-negatives"):
        get_loss("clip+textsep").build(type("Run", (), {"hard_negatives": ""})())


def test_cli_two_steps_train_the_separation_term(tmp_path, monkeypatch):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    out = tmp_path / "run"
    rows = two_steps_on_pairs(
        out, "--loss", "clip+textsep", "--hard-negatives", "attribute", "--textsep-margin", "1.5"
    )
    terms = [r["loss/textsep"] for r in rows if "loss/textsep" in r]
    # Every scene is a pair, so most have a colour swap; a margin of 1.5 leaves no pair
    # alone unless the two captions point apart (cos < -0.5), which a 2-step model
    # cannot do.
    assert len(terms) == 2 and all(math.isfinite(x) and x > 0 for x in terms)
    assert "textsep_margin: 1.5" in (out / "config.yaml").read_text()
