"""Similarity distillation against a naive loop; the three kinds of teacher."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, clip_loss, get_loss, similarity_kd_loss
from clipforge.models import create_model
from tests.conftest import MICRO_ARGS
from tests.losses.naive import dot, emb, lse
from tests.tolerance import reorder_bound, softmax_loss_bound


def _kl(p_logits, q_logits):
    lp = [v - lse(p_logits) for v in p_logits]
    lq = [v - lse(q_logits) for v in q_logits]
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))


def _kd_bound(dim: int, columns: int, rows: int, scale: float, kl: float) -> float:
    """``KL(P || Q) = sum_j p_j (log p_j - log q_j)``: the errors of log p and log q (each a
    softmax chain, bounded as one with the wider rows and the larger scale) pass weighted
    by p, which sums to 1; p = exp(log p) turns log p's error into a relative one, weighted
    by ``sum_j p_j |log p_j - log q_j| <= KL + 2`` (as ``p log(q / p) <= q - p``); the sum
    over the columns and the exp add ``columns + 1``. In all ``KL + 4`` chains."""
    return (kl + 4) * softmax_loss_bound(dim, columns, rows, scale, extra_terms=columns + 1)


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
    # Student rows 6 wide, teacher rows 5: bounded as 6; scales 4 and 7: as 7. That is
    # 2.9e-4; the KL taken the other way round (Q || P) differs by 4.5e-2.
    assert got.item() == pytest.approx(expected, abs=_kd_bound(6, 4, 3, 7.0, expected))
    # A student equal to the teacher has nothing to learn.
    same = similarity_kd_loss(x, y, 3.0, x, y, 3.0).item()
    assert same == pytest.approx(0.0, abs=_kd_bound(6, 4, 3, 3.0, 0.0))


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
    # The objective normalises the teacher rows itself (F.normalize, and again the unit
    # ones): 8 + 2 roundings per row each, 2 x 10 more per teacher logit; its feature term
    # is 1 - cosine_similarity (a dot, two norms: 2 x 8 + 5) against the 8 + 2 of txn,
    # averaged over 4 rows and 2 directions; the weighted sum rounds 4 times more.
    tol = (
        0.75 * softmax_loss_bound(dim=8, columns=4, rows=4, scale=5.0)
        + 0.25 * _kd_bound(8 + 2 * 10, 4, 4, 10.0, kd.item())
        + 0.5 * reorder_bound(2 * 8 + 5 + 8 + 2 + 4 + 2, 2.0)  # |1 - cos| <= 2
        + reorder_bound(4, expected.item())
    )
    assert obj(f).item() == pytest.approx(expected.item(), abs=tol)
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
    # float32: the student's before + 1, the lerp weight 1 - 0.9, its product and the sum:
    # four roundings, none of a value above |before| + 1.
    tol = reorder_bound(4, abs(before) + 1.0)
    assert obj.teacher.logit_scale.item() == pytest.approx(before + 0.1, abs=tol)
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
