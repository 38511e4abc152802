import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import create_model
from clipforge.models.posembed import sincos_2d
from tests.tolerance import CANCEL, reorder_bound, tower_terms

# sincos_2d computes in float64 (the frequency, a product, the sine: ~5 roundings of values
# <= 1) and rounds once to float32.
SINCOS = reorder_bound(1, 1.0) + reorder_bound(5, 1.0, torch.float64)


def test_sincos_values():
    e = sincos_2d(grid=2, width=8)
    assert e.shape == (4, 8)
    # Patch 1 is (row 0, col 1): x = 1, y = 0; frequencies 1 and 1/100 for 2 per quarter.
    expected = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01), 0, 0, 1, 1]
    assert e[1].tolist() == pytest.approx(expected, abs=SINCOS)
    # Patch 2 is (row 1, col 0).
    assert e[2, 4].item() == pytest.approx(math.sin(1), abs=SINCOS)
    # Neighbours are more alike than far patches.
    g = sincos_2d(8, 64)
    assert torch.dist(g[0], g[1]) < torch.dist(g[0], g[63])
    with pytest.raises(ValueError):
        sincos_2d(2, 6)


def test_sincos_init_in_model(micro_args):
    m = create_model("tiny", {**micro_args, "vision.pos_init": "sincos"})
    assert torch.equal(m.visual.pos_embed[0], torch.zeros(32))  # class token position
    assert torch.allclose(m.visual.pos_embed[1:], sincos_2d(4, 32), rtol=0, atol=2 * SINCOS)
    assert m.visual.pos_embed.requires_grad


def test_conv_stem_grid_and_receptive_field(micro_args):
    m = create_model("tiny", {**micro_args, "vision.stem": "conv"}).eval()
    tokens = m.visual.tokens(torch.randn(2, 3, 16, 16))
    assert tokens.shape == (2, 1 + 16, 32)
    # Overlapping 3x3 convolutions: a pixel change reaches the next token, not only its own.
    x = torch.zeros(1, 3, 16, 16)
    y = x.clone()
    y[0, :, 0, 0] = 1.0
    stem = m.visual.patch_embed
    diff = (stem(x) - stem(y)).abs().sum(1)[0]
    assert diff[0, 0] > 0 and diff[1, 1] == 0 and diff[3, 3] == 0
    y2 = x.clone()
    y2[0, :, 3, 3] = 1.0  # the last pixel of patch (0, 0) also feeds token (1, 1)
    diff2 = (stem(x) - stem(y2)).abs().sum(1)[0]
    assert diff2[0, 0] > 0 and diff2[1, 1] > 0 and diff2[2, 2] == 0
    with pytest.raises(ClipforgeError, match="power-of-two"):
        create_model(
            "tiny",
            {**micro_args, "vision.stem": "conv", "vision.image_size": 24, "vision.patch_size": 6},
        )


def test_grid_pooling_keeps_where_features_are(micro_args):
    # float64: the chain below is 929 terms, which with the allowance for LayerNorm's
    # cancellation makes a float32 bound 11% of the scale; in float64 it is 2e-10.
    model = create_model("tiny", {**micro_args, "vision.pool": "grid"}).eval().double()
    v = model.visual
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        tokens = v.tokens(images)[:, int(v.cfg.class_token) :]  # a 4 x 4 token grid
        grid = tokens.reshape(2, 4, 4, 32)
        quads = [grid[:, :2, :2], grid[:, :2, 2:], grid[:, 2:, :2], grid[:, 2:, 2:]]
        parts = [tokens.mean(1)] + [q.reshape(2, -1, 32).mean(1) for q in quads]
        pooled = torch.cat([v.norm_post(p) for p in parts], dim=1)
        ref = v.proj(pooled)
        # The tower (4 x 4 x 3 patch pixels, one block of width 32 over 17 tokens), a mean
        # over up to 16 tokens, LayerNorm and the projection of 5 x 32.
        terms = tower_terms(3 * 4 * 4, 32, 1, 17, 4 * 32, 16) + 16 + 5 * 32
        tol = reorder_bound(terms, CANCEL * (1 + float(ref.abs().max())), torch.float64)
        assert torch.allclose(v(images), ref, rtol=0, atol=tol)
    assert v.proj.in_features == 5 * 32
    with pytest.raises(ClipforgeError, match="pool_grid"):
        create_model("tiny", {**micro_args, "vision.pool": "grid", "vision.pool_grid": 3})
