"""ALIP-style weights: the consistency score against a loop, and the weighted loss."""

import math

import pytest
import torch

from clipforge.losses import Features, clip_loss
from clipforge.losses.alip import AlipObjective, consistency
from clipforge.models import create_model
from tests.losses.naive import dot, emb, lse
from tests.tolerance import reorder_bound, softmax_loss_bound


def _naive(X, Y, s, owner):
    b, t = len(X), len(Y)
    L = [[s * dot(X[i], Y[j]) for j in range(t)] for i in range(b)]
    out = []
    for i in range(b):
        p = min(j for j in range(t) if owner[j] == i)
        i2t = math.exp(L[i][p] - lse(L[i]))
        col = [L[k][p] for k in range(b)]
        t2i = math.exp(L[i][p] - lse(col))
        out.append((i2t + t2i) / 2)
    return out


@pytest.mark.parametrize("owner", [None, [0, 1, 1, 2, 3, -1, -1]])
def test_consistency_matches_a_loop(owner):
    b, d, s = 4, 6, 7.0
    t = b if owner is None else len(owner)
    image, text = emb(b, d, seed=3), emb(t, d, seed=4)
    got = consistency(image, text, s, None if owner is None else torch.tensor(owner))
    want = _naive(image.tolist(), text.tolist(), s, owner or list(range(b)))
    # A softmax probability (<= 1): the logit chain (d products, the scale) twice, the
    # exponentials and their sum over at most t columns, the division, the average.
    tol = reorder_bound(2 * (d + 1) + t + 4 + 2, 1.0)
    assert got.tolist() == pytest.approx(want, abs=tol)


def test_an_inconsistent_pair_weighs_little():
    # Teacher embeddings: pairs 0-2 agree (cosine 1), caption 3 is image 0's.
    t_image = torch.eye(4)
    t_text = torch.eye(4)[[0, 1, 2, 0]]
    c = consistency(t_image, t_text, 20.0)
    # Image 3 scores 0 against every caption, so its softmax gives caption 3 a quarter;
    # caption 3 fits image 0 by a logit of 20, so it gives image 3 1 / (e^20 + 3) = 2e-9.
    assert float(c[3]) == pytest.approx(1 / 8, abs=1e-6)
    assert bool((c[:3] > 0.49).all())  # columns 0 and 3 are twins: image 0 splits them


def test_the_objective_is_clip_weighted_by_the_teachers_consistency(micro_args):
    torch.manual_seed(0)
    model = create_model("tiny", micro_args)
    objective = AlipObjective("ema", ema_decay=0.5, power=2.0)
    objective.attach(model)
    b, d = 5, 32
    image, text = emb(b, d, seed=5), emb(b, d, seed=6)
    t_image, t_text = emb(b, d, seed=7), emb(b, d, seed=8)
    data_w = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0])
    f = Features(image, text, torch.tensor(10.0), weights=data_w,
                 extra={"alip_image": t_image, "text_alip": t_text})  # fmt: skip
    scale = float(model.logit_scale_exp().detach())
    w = consistency(t_image, t_text, scale) ** 2 * data_w
    want = clip_loss(image, text, torch.tensor(10.0), weights=w)
    # The same float32 operations in the same order: equal up to the weights' rounding,
    # which moves the weighted mean by at most its own relative error.
    tol = softmax_loss_bound(d, b, b, 10.0, weighted=True, extra_terms=4)
    assert float(objective(f)) == pytest.approx(float(want), abs=tol)
    assert objective.metrics()["alip/consistency"] == pytest.approx(
        float(consistency(t_image, t_text, scale).mean()), abs=reorder_bound(b, 1.0)
    )


def test_the_ema_teacher_follows_the_student(micro_args):
    model = create_model("tiny", micro_args)
    objective = AlipObjective("ema", ema_decay=0.75)
    objective.attach(model)
    before = objective.teacher.logit_scale.clone()
    with torch.no_grad():
        model.logit_scale += 1.0
    objective.after_step(model)
    # lerp by 1 - 0.75 of the gap of 1.0: a quarter of the way, up to a few float32 ulps
    # of the values near 2.7 (2.4e-7 each).
    assert float(objective.teacher.logit_scale - before) == pytest.approx(0.25, abs=1e-6)
    assert not any(p.requires_grad for p in objective.teacher.parameters())
