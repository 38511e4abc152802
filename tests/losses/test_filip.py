"""FILIP's late interaction against a loop, and the per-token features of the towers."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.losses.filip import filip_loss, late_interaction
from clipforge.models import create_model
from tests.losses.naive import dot, lse
from tests.tolerance import CANCEL, reorder_bound, softmax_loss_bound, tower_terms


def _tokens(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _naive(X, Y, mask, s):
    b, t = len(X), len(Y)
    SI = [[0.0] * t for _ in range(b)]
    ST = [[0.0] * t for _ in range(b)]
    for i in range(b):
        for j in range(t):
            own = [k for k in range(len(Y[j])) if mask[j][k]]
            SI[i][j] = sum(max(dot(x, Y[j][k]) for k in own) for x in X[i]) / len(X[i])
            ST[i][j] = sum(max(dot(x, Y[j][k]) for x in X[i]) for k in own) / len(own)
    li = [lse([s * v for v in SI[i]]) - s * SI[i][i] for i in range(b)]
    lt = [lse([s * ST[k][j] for k in range(b)]) - s * ST[j][j] for j in range(t)]
    return SI, ST, (sum(li) / b + sum(lt) / t) / 2


def test_late_interaction_matches_a_loop():
    b, n, m, d, s = 3, 5, 6, 8, 4.0
    x, y = _tokens((b, n, d), 0), _tokens((b, m, d), 1)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    # Padding made the most similar token of every patch: it must never be picked.
    y = torch.where(mask[..., None] > 0, y, x.mean(dim=(0, 1))[None, None] * 10)
    s_image, s_text = late_interaction(x, y, mask)
    SI, ST, want = _naive(x.tolist(), y.tolist(), mask.tolist(), s)
    # A score is a mean of maxima of d-term dots (exact picks, d + 2 roundings each) over
    # at most max(n, m) tokens: d + 2 + max(n, m) + 1 roundings of values <= 1; padding
    # is excluded, not approximated, so a 10x padding dot would be an error of ~10.
    tol = reorder_bound(d + 3 + max(n, m), 1.0)
    assert s_image.tolist() == [pytest.approx(r, abs=tol) for r in SI]
    assert s_text.tolist() == [pytest.approx(r, abs=tol) for r in ST]
    got = float(filip_loss(x, y, mask, torch.tensor(s)))
    # The softmax chain over scores (their own roundings counted as extra terms).
    assert got == pytest.approx(want, abs=softmax_loss_bound(d, b, b, s, extra_terms=max(n, m) + 3))


def test_matching_tokens_score_one():
    # A caption made of the image's own patches scores 1 both ways.
    x = _tokens((2, 4, 8), 2)
    mask = torch.ones(2, 4)
    s_image, s_text = late_interaction(x, x, mask)
    assert torch.diagonal(s_image).tolist() == pytest.approx([1.0, 1.0], abs=reorder_bound(12, 1))
    assert torch.diagonal(s_text).tolist() == pytest.approx([1.0, 1.0], abs=reorder_bound(12, 1))
    assert math.isfinite(float(filip_loss(x, x, mask, torch.tensor(10.0))))


@pytest.mark.parametrize("pool", ["mean", "cls", "map"])
def test_the_towers_give_token_features_in_the_same_pass(micro_args, pool):
    torch.manual_seed(0)
    model = create_model("tiny", {**micro_args, "vision.pool": pool}).double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    tokens = torch.zeros(2, 24, dtype=torch.long)
    tokens[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    tokens[1, :3] = torch.tensor([49406, 320, 49407])
    plain = model(images, tokens)
    out = model(images, tokens, with_tokens=True)
    # The same float64 computation with more outputs, except that without token outputs a
    # tower pooling one token runs its last block for that row alone (other matmul
    # shapes): the pooled embeddings agree to a reordering of the towers' terms.
    for a, b in ((plain.image, out.image), (plain.text, out.text)):
        tol = reorder_bound(tower_terms(48, 32, 1, 24, 128, 16), CANCEL, torch.float64)
        assert torch.allclose(a, b, rtol=0, atol=tol)
    assert out.image_tokens.shape == (2, 16, 32)  # (16 / 4)^2 patches, embed_dim 32
    assert out.text_tokens.shape == (2, 24, 32)  # padded back to the full context
    assert out.text_mask.sum(dim=1).tolist() == [4, 3]  # start to end token
    # The end token's feature is the caption's embedding (the same float64 arithmetic on
    # one row or on all: at most a reordering of 32-term dots, far below 1e-12).
    assert torch.allclose(out.text_tokens[0, 3], out.text[0], atol=1e-12)


def test_grid_pooling_has_no_token_features(micro_args):
    model = create_model("tiny", {**micro_args, "vision.pool": "grid", "vision.pool_grid": 2})
    with pytest.raises(ClipforgeError, match="grid pooling"):
        model(torch.randn(1, 3, 16, 16), torch.zeros(1, 24, dtype=torch.long), with_tokens=True)
