"""Similarity distillation against a naive loop; the three kinds of teacher."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, clip_loss, get_loss, similarity_kd_loss
from clipforge.models import create_model
from tests.conftest import MICRO_ARGS
from tests.losses.naive import dot, emb, lse


def _kl(p_logits, q_logits):
    lp = [v - lse(p_logits) for v in p_logits]
    lq = [v - lse(q_logits) for v in q_logits]
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))


def test_kd_matches_naive_loop_with_hard_negatives():
    x, y, tx, ty = emb(3), emb(4, seed=1), emb(3, 5, seed=2), emb(4, 5, seed=3)
    owner = [0, 1, 2, -1]
    s, st = 4.0, 7.0
    S = [[s * dot(a, b) for b in y.tolist()] for a in x.tolist()]
    T = [[st * dot(a, b) for b in ty.tolist()] for a in tx.tolist()]
    i2t = [_kl(T[i], S[i]) for i in range(3)]
    t2i = [_kl([T[k][j] for k in range(3)], [S[k][j] for k in range(3)]) for j in range(3)]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = similarity_kd_loss(x, y, torch.tensor(s), tx, ty, st, owner=torch.tensor(owner))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # A student equal to the teacher has nothing to learn.
    assert similarity_kd_loss(x, y, 3.0, x, y, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def _cfg(**kw):
    return type("C", (), kw)()


def test_stored_teacher_mixes_clip_kd_and_feature_terms():
    obj = get_loss("distill").build(
        _cfg(teacher="data", distill_weight=0.25, distill_temperature=0.1,
             distill_feature_weight=0.5)
    )  # fmt: skip
    assert obj.batch_keys == ("teacher_image", "teacher_text")
    x, y, s = emb(4, 8), emb(4, 8, seed=1), torch.tensor(5.0)
    tx, ty = 3 * emb(4, 8, seed=2), emb(4, 8, seed=3)  # stored rows need not be unit length
    f = Features(x, y, s, extra={"teacher_image": tx, "teacher_text": ty})
    txn = tx / tx.norm(dim=1, keepdim=True)
    kd = similarity_kd_loss(x, y, s, txn, ty, 10.0)
    feat = ((1 - (x * txn).sum(1)).mean() + (1 - (y * ty).sum(1)).mean()) / 2
    expected = 0.75 * clip_loss(x, y, s) + 0.25 * kd + 0.5 * feat
    assert obj(f).item() == pytest.approx(expected.item(), abs=1e-5)
    assert set(obj.metrics()) == {"loss/contrastive", "loss/kd", "loss/feature"}
    with pytest.raises(ClipforgeError, match="one caption per sample"):
        obj(f.replace(owner=torch.arange(4)))


def test_ema_teacher_follows_the_student_after_each_step():
    torch.manual_seed(0)
    model = create_model("tiny", dict(MICRO_ARGS))
    obj = get_loss("distill").build(_cfg(teacher="ema", teacher_ema_decay=0.9))
    obj.attach(model)
    assert not any(p.requires_grad for p in obj.teacher.parameters())
    before = obj.teacher.logit_scale.item()
    with torch.no_grad():
        model.logit_scale += 1.0
    obj.after_step(model)
    assert obj.teacher.logit_scale.item() == pytest.approx(before + 0.1, abs=1e-6)
    # The teacher's embeddings come from prepare() and carry no gradient.
    images, tokens = torch.randn(2, 3, 16, 16), torch.tensor([[5, 49407], [6, 49407]])
    extra = obj.prepare(images, tokens)
    assert extra["teacher_image"].shape == (2, 32) and not extra["text_teacher"].requires_grad
    assert "teacher" in "".join(obj.state_dict())  # checkpointed with the objective


def test_frozen_teacher_and_bad_options(micro_checkpoint):
    obj = get_loss("distill").build(_cfg(teacher=str(micro_checkpoint)))
    assert obj.mode == "frozen" and obj.teacher.logit_scale.requires_grad is False
    for kw, msg in (
        ({"teacher": None}, "needs --teacher"),
        ({"teacher": "data", "distill_weight": 2.0}, "distill-weight"),
        ({"teacher": "ema", "teacher_ema_decay": 1.0}, "ema-decay"),
    ):
        with pytest.raises(ClipforgeError, match=msg):
            get_loss("distill").build(_cfg(**kw))
