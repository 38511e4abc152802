"""The own-image hard-negative margin loss: hand-computed values, a loop, and its plumbing."""

import math

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.batches import Collator, Item
from clipforge.data.tokenizer import get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.losses import Features, get_loss
from clipforge.losses.base import NEGATIVE_OF
from clipforge.losses.textneg import textneg_loss
from clipforge.train.distributed import World
from clipforge.train.step import check_cacheable, negative_rows
from tests.losses.naive import dot, emb, lse, two_steps_on_pairs
from tests.tolerance import softmax_loss_bound


def _hand_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Captions of images 0 and 1, then negatives: two of image 0, one of image 1.
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    owner = torch.tensor([0, 1, -1, -1, -1])
    negative_of = torch.tensor([-1, -1, 0, 1, 0])
    return image, text, owner, negative_of


def test_hand_computed_value():
    image, text, _, negative_of = _hand_case()
    s, m = 2.0, 0.1
    got = textneg_loss(image, text, torch.tensor(s), torch.tensor([0, 1]), negative_of, m)
    # Image 0: its caption scores 1, its negatives 0.6 and 0; image 1: 1 against 0.6.
    l0 = math.log(1 + math.exp(s * (0.6 - 1 + m)) + math.exp(s * (0.0 - 1 + m)))
    l1 = math.log(1 + math.exp(s * (0.6 - 1 + m)))
    # Cosines of 2-d rows read from decimals (0.6, 0.8, 0.1 round in float32), plus the
    # margin's addition and the difference (2 terms); |z| <= s (2 + m).
    tol = softmax_loss_bound(2, 3, 2, s * (2 + m), decimal_inputs=True, extra_terms=2)
    assert float(got) == pytest.approx((l0 + l1) / 2, abs=tol)


def test_margin_shifts_every_logit_by_s_m():
    # One negative per image: the loss is softplus(s (c_n - c_p + m)); a zero margin is
    # the cross-entropy of the caption against its own negative alone.
    image, text, _, _ = _hand_case()
    negative_of = torch.tensor([-1, -1, 0, -1, -1])
    s = 3.0
    for m in (0.0, 0.5):
        got = textneg_loss(image, text, torch.tensor(s), torch.tensor([0, 1]), negative_of, m)
        want = math.log(1 + math.exp(s * (0.6 - 1 + m)))
        tol = softmax_loss_bound(2, 2, 1, s * (2 + m), decimal_inputs=True, extra_terms=2)
        assert float(got) == pytest.approx(want, abs=tol)


def test_matches_a_loop_with_weights_and_an_image_without_negatives():
    b, t, d, s, m = 4, 9, 6, 7.0, 0.3
    image, text = emb(b, d, seed=3), emb(t, d, seed=4)
    positive = torch.tensor([0, 1, 2, 3])
    # Image 2 has no negative and so no term; image 0 has three.
    negative_of = torch.tensor([-1, -1, -1, -1, 0, 1, 0, 3, 0])
    weights = torch.tensor([1.0, 2.0, 5.0, 0.5])
    got = textneg_loss(image, text, torch.tensor(s), positive, negative_of, m, weights)
    im, tx = image.tolist(), text.tolist()
    terms, ws = [], []
    for i in range(b):
        own = [j for j in range(t) if int(negative_of[j]) == i]
        if not own:
            continue
        c_p = dot(im[i], tx[int(positive[i])])
        terms.append(lse([0.0] + [s * (dot(im[i], tx[j]) - c_p + m) for j in own]))
        ws.append(float(weights[i]))
    want = sum(w * x for w, x in zip(ws, terms, strict=True)) / sum(ws)
    # Up to 4 columns (the positive's 0 and three negatives), 3 weighted rows.
    tol = softmax_loss_bound(d, 4, 3, s * (2 + m), weighted=True, extra_terms=2)
    assert float(got) == pytest.approx(want, abs=tol)


def test_no_negatives_is_a_differentiable_zero_and_the_temperature_is_not_trained():
    image, text, owner, negative_of = _hand_case()
    image = image.clone().requires_grad_()
    scale = torch.tensor(2.0, requires_grad=True)
    none = torch.full((5,), -1)
    obj = get_loss("textneg").build(type("Run", (), {"hard_negatives": "attribute"})())
    zero = obj(Features(image, text, scale, owner=owner, extra={NEGATIVE_OF: none}))
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert image.grad is not None and float(image.grad.abs().sum()) == 0.0
    loss = obj(Features(image, text, scale, owner=owner, extra={NEGATIVE_OF: negative_of}))
    loss.backward()
    assert float(loss.detach()) > 0 and float(image.grad.abs().sum()) > 0
    assert scale.grad is None  # the contrastive term owns the temperature


def test_negative_rows_name_the_sample_each_negative_came_from():
    items = [
        Item(0, torch.zeros(3, 4, 4, dtype=torch.uint8), ["a red circle"],
             negatives=["a blue circle", "a red square"]),
        Item(1, torch.zeros(3, 4, 4, dtype=torch.uint8), ["a blue square"], negatives=[]),
        # Its negative is sample 0's caption: dropped (a false negative for image 0).
        Item(2, torch.zeros(3, 4, 4, dtype=torch.uint8), ["a green star"],
             negatives=["a red circle", "a green circle"]),
    ]  # fmt: skip
    batch = Collator(get_tokenizer(16), (0.5,) * 3, (0.5,) * 3)(items, 3, {})
    assert batch.texts[3:] == ["a blue circle", "a red square", "a green circle"]
    assert negative_rows(batch).tolist() == [-1, -1, -1, 0, 0, 2]
    # A micro-batch renumbers its rows from 0.
    assert negative_rows(batch.rows(slice(1, 3))).tolist() == [-1, -1, 1]


def test_build_needs_hard_negatives_and_refuses_gradient_caching():
    with pytest.raises(ClipforgeError, match="add --hard-negatives"):
        get_loss("clip+textneg").build(type("Run", (), {"hard_negatives": ""})())
    run = type("Run", (), {"hard_negatives": "attribute", "accum_steps": 2,
                           "loss": "clip+textneg"})()  # fmt: skip
    with pytest.raises(ClipforgeError, match="--accum-exact"):
        check_cacheable(run, get_loss("clip+textneg").build(run), World())


def test_cli_two_steps_train_the_margin_term(tmp_path, monkeypatch):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    out = tmp_path / "run"
    rows = two_steps_on_pairs(
        out, "--loss", "clip+textneg", "--hard-negatives", "attribute,relation",
        "--textneg-margin", "0.2",
    )  # fmt: skip
    terms = [r["loss/textneg"] for r in rows if "loss/textneg" in r]
    # Every scene is a pair of two objects, so each step has negatives: a positive term.
    assert len(terms) == 2 and all(math.isfinite(x) and x > 0 for x in terms)
    assert "textneg_margin: 0.2" in (out / "config.yaml").read_text()


def test_cli_without_hard_negatives_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--loss", "clip+textneg", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "add --hard-negatives" in err and len(err.splitlines()) == 1
    assert not out.exists()
