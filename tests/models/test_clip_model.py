import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import create_model, get_model_config, list_models
from tests.tolerance import CANCEL, norm_bound, reorder_bound, tower_terms

# The micro text tower: one block of width 32 (MLP 128, 16-wide heads) over 24 tokens, and
# the projection; as in tests/models/test_convert.py, compared in float64, where the bound
# is 1.6e-10 of the scale (in float32, with the allowance for cancellation: 9%).
TEXT_TERMS = tower_terms(1, 32, 1, 24, 4 * 32, 16)


def _text_tol(ref: torch.Tensor) -> float:
    return reorder_bound(TEXT_TERMS, CANCEL * (1 + float(ref.detach().abs().max())), torch.float64)


def test_presets_exist():
    assert {"tiny", "small", "ViT-B-32", "ViT-B-16", "ViT-L-14"} <= set(list_models())


def test_openai_vit_b32_parameter_count():
    # OpenAI's released ViT-B/32 has exactly 151,277,313 parameters.
    with torch.device("meta"):
        m = create_model("ViT-B-32")
    assert sum(p.numel() for p in m.parameters()) == 151_277_313


def test_forward_shapes_and_normalisation(micro_args):
    m = create_model("tiny", micro_args)
    x = torch.randn(3, 3, 16, 16)
    t = torch.zeros(3, 24, dtype=torch.long)
    t[:, 0], t[:, 1], t[:, 2] = 49406, 320, 49407
    out = m(x, t)
    assert out.image.shape == (3, 32) and out.text.shape == (3, 32)
    assert torch.allclose(out.image.norm(dim=-1), torch.ones(3), rtol=0, atol=norm_bound(32))
    # exp of log(1 / 0.07) stored in float32: its rounding u |t| becomes a relative error
    # of exp(t), and exp rounds once more.
    assert out.scale.item() == pytest.approx(1 / 0.07, rel=reorder_bound(1, 1 + math.log(1 / 0.07)))
    assert out.bias is None


def test_text_padding_does_not_change_features(micro_args):
    # The tower trims the padded tail; a caption must embed the same in any batch.
    m = create_model("tiny", micro_args).eval().double()
    short = torch.zeros(1, 24, dtype=torch.long)
    short[0, :3] = torch.tensor([49406, 320, 49407])
    long = torch.zeros(1, 24, dtype=torch.long)
    long[0, :10] = torch.tensor([49406, *range(400, 408), 49407])
    alone = m.encode_text(short)
    together = m.encode_text(torch.cat([short, long]))[0:1]
    assert alone.dtype == torch.float64
    assert torch.allclose(alone, together, rtol=0, atol=_text_tol(alone))


def test_causal_text_ignores_later_tokens(micro_args):
    m = create_model("tiny", micro_args).eval().double()
    t = torch.zeros(1, 24, dtype=torch.long)
    t[0, :4] = torch.tensor([49406, 320, 321, 49407])
    t2 = t.clone()
    t2[0, 5] = 999  # after the end token: must not matter
    ref = m.encode_text(t)
    assert torch.allclose(ref, m.encode_text(t2), rtol=0, atol=_text_tol(ref))


def test_mean_pool_and_logit_bias(micro_args):
    m = create_model("tiny", {**micro_args, "vision.pool": "mean"}, init_logit_bias=-10.0)
    out = m(torch.randn(2, 3, 16, 16), torch.tensor([[49406, 320, 49407] + [0] * 21] * 2))
    assert out.bias.item() == -10.0


def test_bad_configs_are_clear():
    with pytest.raises(ClipforgeError, match="not divisible by patch size"):
        get_model_config("tiny", {"vision.image_size": 30})
    with pytest.raises(ClipforgeError, match="unknown model preset 'huge'"):
        get_model_config("huge")
    with pytest.raises(ClipforgeError, match="unknown model field 'vision.nope'"):
        get_model_config("tiny", {"vision.nope": 3})
