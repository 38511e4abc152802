"""Frozen towers read batches made for a student of another input size or context."""

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.losses.distill import feature_cosine_loss
from clipforge.losses.towers import embed, freeze
from clipforge.models import load
from tests.tolerance import norm_bound, reorder_bound


def test_embed_resizes_images_and_pads_or_refuses_tokens(micro_checkpoint):
    tower = freeze(load(micro_checkpoint, what="test tower"))  # 16 px, 24-token context
    tokens = torch.zeros(2, 30, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 7, 49407
    img, txt = embed(tower, torch.randn(2, 3, 32, 32), tokens)  # bigger images, longer rows
    assert img.shape == txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(2), rtol=0, atol=norm_bound(32))
    short, _ = embed(tower, torch.randn(2, 3, 16, 16), tokens[:, :5])
    assert short.shape == (2, 32)
    tokens[:, 26] = 49407  # a caption that really needs 27 tokens
    with pytest.raises(ClipforgeError, match="reads 24 tokens but the batch needs 27"):
        embed(tower, torch.randn(2, 3, 16, 16), tokens)


def test_feature_term_needs_equal_widths():
    with pytest.raises(ClipforgeError, match="equal widths"):
        feature_cosine_loss(torch.randn(2, 4), torch.randn(2, 5))
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    # cos(x, 2x) = 1 up to a dot and two norms of 4 terms (2 x 4 + 5 roundings), then 1 - cos
    # and a mean of 3 values near 0.
    loss = feature_cosine_loss(x, 2 * x).item()
    assert loss == pytest.approx(0.0, abs=reorder_bound(2 * 4 + 5 + 1 + 3, 1.0))
