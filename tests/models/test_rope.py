"""Rotary text positions (``text.pos=rope``): the rotation, and a text tower without a
position table."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, get_model_config
from clipforge.models.posembed import apply_rope, rope_tables
from clipforge.models.stretch import stretch_positions
from tests.conftest import MICRO_ARGS
from tests.tolerance import reorder_bound

F64 = torch.float64
ROPE = {**MICRO_ARGS, "text.pos": "rope"}


def _rotate(x: torch.Tensor, position: int, base: float = 10000.0) -> torch.Tensor:
    cos, sin = rope_tables(position + 1, x.shape[-1], base, x.device, x.dtype)
    return apply_rope(x[None], cos[position : position + 1], sin[position : position + 1])[0]


def test_rotation_by_hand():
    # Head width 2: one channel pair at frequency base^0 = 1, so position m turns the pair
    # by m radians; (1, 0) at position 1 becomes (cos 1, sin 1), (0, 1) (-sin 2, cos 2) at 2.
    got = _rotate(torch.tensor([1.0, 0.0], dtype=F64), 1)
    assert got.tolist() == [math.cos(1.0), math.sin(1.0)]
    got = _rotate(torch.tensor([0.0, 1.0], dtype=F64), 2)
    assert got.tolist() == [-math.sin(2.0), math.cos(2.0)]
    # Width 4: the second pair (channels 1 and 3) turns at base^(-1/2) = 1/100 per position.
    got = _rotate(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64), 3)
    torch.testing.assert_close(
        got, torch.tensor([0.0, math.cos(0.03), 0.0, math.sin(0.03)], dtype=F64),
        atol=reorder_bound(4, 1.0, F64), rtol=0,
    )  # fmt: skip


def test_query_key_products_depend_on_relative_position_only():
    torch.manual_seed(0)
    d = 8
    q, k = torch.randn(d, dtype=F64), torch.randn(d, dtype=F64)
    # Each rotated entry is a cos - b sin: cos and sin rounded once each (their angle m w
    # in float64 rounds once more per unit of position, at most 12 here), two products and
    # a sum; the dot product adds d of them. Every term is at most |q|_1 |k|_1 in size.
    tol = reorder_bound(d + 4 + 12, float(q.abs().sum() * k.abs().sum()), F64)
    for m, n in ((3, 1), (5, 5), (0, 4)):
        ref = float(_rotate(q, m) @ _rotate(k, n))
        for shift in (1, 4, 7):
            got = float(_rotate(q, m + shift) @ _rotate(k, n + shift))
            assert got == pytest.approx(ref, rel=0, abs=tol), (m, n, shift)
    # A different offset gives a different product: the position does matter.
    assert (
        abs(float(_rotate(q, 3) @ _rotate(k, 1)) - float(_rotate(q, 1) @ _rotate(k, 3))) > 1e3 * tol
    )
    # A rotation keeps the vector's length.
    assert float(_rotate(q, 9).norm()) == pytest.approx(float(q.norm()), rel=0, abs=tol)


def _caption(length: int, vocab: int) -> torch.Tensor:
    """Token ids 1..length-2 between a start token and the end token (the largest id)."""
    return torch.tensor([[vocab - 2, *range(1, length - 1), vocab - 1]])


def test_rope_text_tower_runs_past_its_trained_context():
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", ROPE)).eval()
    cfg = model.cfg.text
    assert model.text.pos_embed is None
    assert "text.pos_embed" not in model.state_dict()
    long = _caption(cfg.context_length + 16, cfg.vocab_size)
    with torch.no_grad():
        out = model.encode_text(long, normalize=True)
    assert out.shape == (1, model.cfg.embed_dim) and bool(torch.isfinite(out).all())
    # A learned table has context_length rows: the same caption has no positions there.
    learned = CLIP(get_model_config("tiny", MICRO_ARGS)).eval()
    with pytest.raises(RuntimeError):
        learned.encode_text(long)


def test_rope_changes_the_text_embedding_with_word_order():
    # Without any position signal a bidirectional text tower would be a bag of words;
    # rotary positions make the order matter.
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", {**ROPE, "text.causal": False})).eval()
    v = model.cfg.text.vocab_size
    a = torch.tensor([[v - 2, 5, 9, 13, v - 1]])
    b = torch.tensor([[v - 2, 13, 9, 5, v - 1]])
    with torch.no_grad():
        ea, eb = model.encode_text(a, normalize=True), model.encode_text(b, normalize=True)
    assert float((ea - eb).abs().max()) > 1e-4


def test_rope_config_checks():
    with pytest.raises(ClipforgeError, match="unknown text pos"):
        get_model_config("tiny", {**MICRO_ARGS, "text.pos": "alibi"})
    with pytest.raises(ClipforgeError, match="even head width"):
        get_model_config("tiny", {**ROPE, "text.width": 30, "text.heads": 2})
    with pytest.raises(ClipforgeError, match="model arg text.rope_base"):
        get_model_config("tiny", {**ROPE, "text.rope_base": 0.0})
    model = CLIP(get_model_config("tiny", ROPE))
    with pytest.raises(ClipforgeError, match="needs no stretching"):
        stretch_positions(model, 48, 4)
