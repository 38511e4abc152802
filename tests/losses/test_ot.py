"""Norton-style transport targets: Sinkhorn's marginals, the bucket, the loss against a loop."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses import Features, clip_loss, get_loss
from clipforge.losses.ot import ot_loss, realigned_targets, sinkhorn
from tests.losses.naive import emb, lse
from tests.tolerance import reorder_bound, softmax_loss_bound


def _basis(*rows: int, d: int = 4) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64)[list(rows)]


def test_sinkhorn_meets_both_marginals():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 6, generator=g, dtype=torch.float64)
    a = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    b = torch.full((6,), 1.0, dtype=torch.float64)
    plan = sinkhorn(cost, a, b, epsilon=0.5, iters=200)
    # The last scaling fits the columns exactly, up to a logsumexp over 5 rows and the exp
    # (7 roundings of values <= 1 each, in float64); the rows converge geometrically, at a
    # rate set by exp(-range(cost) / eps) >= e^-2 here, so 200 passes leave far less than
    # the 1e-12 asked.
    assert plan.sum(dim=0).tolist() == pytest.approx(
        b.tolist(), abs=reorder_bound(7 * 6, 1, torch.float64)
    )
    assert plan.sum(dim=1).tolist() == pytest.approx(a.tolist(), abs=1e-12)
    assert bool((plan > 0).all())


def test_the_bucket_takes_a_pair_that_matches_nothing():
    # Pairs 0 and 1 match (cosine 1); caption 2 contradicts its image (cosine -1) and is
    # orthogonal to the others.
    image = _basis(0, 1, 2)
    text = torch.cat([_basis(0, 1), -_basis(2)])
    # eps 0.1 rather than the default 0.05: Sinkhorn's rate falls as exp(-range / eps),
    # and this tie-ridden case needs 1000 passes even so (a real batch needs ~50).
    plan, bucket = realigned_targets(image @ text.T, epsilon=0.1, iters=1000)
    # The negatives are all 0, so is the bucket. Every plan entry at similarity 0 competes
    # with the bucket on equal terms, so some mass spreads there (entropy); the pair of
    # cosine -1 is exp(-1 / 0.1) = 4.5e-5 times as likely as the bucket.
    assert float(plan[0, 0]) > 0.98 and float(plan[1, 1]) > 0.98
    assert float(bucket[2]) > 0.98 and float(plan[2, 2]) < 4.5e-5
    # Converged: every row (bucket included) and column holds its mass.
    assert (plan.sum(dim=1) + bucket).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    # So the contradicting pair is no target and the loss does not pull it together, as
    # CLIP's does.
    s = torch.tensor(10.0, dtype=torch.float64)
    assert float(ot_loss(image, text, s, epsilon=0.1, iters=1000)) < 0.5
    # CLIP pays -log softmax of -10 against two zeros, ~10.7, in one of three rows.
    assert float(clip_loss(image, text, s)) > 3


def test_the_plan_realigns_swapped_captions():
    image, text = _basis(0, 1, 2), _basis(1, 0, 2)  # captions 0 and 1 swapped
    # The median negative (0) as the bucket: a 3-pair batch has too few negatives for 0.9.
    plan, bucket = realigned_targets(image @ text.T, 0.05, 200, bucket_quantile=0.5)
    assert plan[0, 1] > 0.99 and plan[1, 0] > 0.99 and plan[2, 2] > 0.99
    assert float(bucket.max()) < 0.01
    # So the realigned loss is low where CLIP's, pulling on the wrong diagonal, is high.
    s = torch.tensor(10.0, dtype=torch.float64)
    assert float(ot_loss(image, text, s, bucket_quantile=0.5)) < 0.01
    assert float(clip_loss(image, text, s)) > 5


def _naive(X, Y, s, alpha, P):
    b = len(X)
    L = [
        [s * sum(x * y for x, y in zip(X[i], Y[j], strict=True)) for j in range(b)]
        for i in range(b)
    ]
    m = [sum(P[i]) for i in range(b)]
    Yt = [
        [alpha * P[i][j] + (1 - alpha) * (m[i] if i == j else 0.0) for j in range(b)]
        for i in range(b)
    ]
    total = sum(map(sum, Yt))
    li = -sum(Yt[i][j] * (L[i][j] - lse(L[i])) for i in range(b) for j in range(b)) / total
    cols = [[L[k][j] for k in range(b)] for j in range(b)]
    lt = -sum(Yt[i][j] * (L[i][j] - lse(cols[j])) for i in range(b) for j in range(b)) / total
    return (li + lt) / 2


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_ot_loss_matches_a_loop_over_the_plan(alpha):
    b, d, s = 6, 8, 5.0
    image, text = emb(b, d, seed=1), emb(b, d, seed=2)
    plan, _ = realigned_targets(image @ text.T)
    got = float(ot_loss(image, text, torch.tensor(s), alpha=alpha))
    want = _naive(image.double().tolist(), text.double().tolist(), s, alpha, plan.double().tolist())
    # The softmax chain, plus the targets: each weighs a log-probability (<= the chain's
    # magnitude) in a sum of b^2 terms, and their total (b^2 more) divides.
    assert got == pytest.approx(want, abs=softmax_loss_bound(d, b, b, s, extra_terms=2 * b * b + 4))


def test_without_noise_and_bucket_it_is_clip():
    # Orthonormal matched pairs: the plan is the identity to within exp(-1 / 0.05) = 2e-9.
    image = text = _basis(0, 1, 2, 3)
    s = torch.tensor(3.0, dtype=torch.float64)
    assert float(ot_loss(image, text, s, alpha=0.0)) == pytest.approx(
        float(clip_loss(image, text, s)), abs=1e-7
    )


def test_ot_refuses_several_captions():
    f = Features(emb(2), emb(3), torch.tensor(1.0), owner=torch.tensor([0, 1, 1]))
    with pytest.raises(ClipforgeError, match="--caption all"):
        get_loss("ot").build(object())(f)
    assert math.isfinite(
        float(
            get_loss("clip+ot").build(object())(Features(emb(3), emb(3, seed=1), torch.tensor(1.0)))
        )
    )
