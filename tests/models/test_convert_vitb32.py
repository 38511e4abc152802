"""The real ViT-B/32 shape (151M parameters): slow, run with ``pytest -m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipforge.data.tokenizer import get_tokenizer
from clipforge.models import get_model_config, load
from clipforge.models.convert import read_checkpoint, save_checkpoint
from tests.models.test_convert import assert_parity, hf_outputs, openclip_outputs, ours, perturb
from tests.tolerance import clip_terms, tower_terms

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

# ViT-B/32's chain: 32 x 32 x 3 patch pixels, 12 blocks of width 768 (MLP 3072, 64-wide
# heads) over 50 tokens; text 12 blocks of width 512 (MLP 2048) over 77 tokens; 512-wide
# features: 187,933 terms, a bound of 4e-8 of the scale in float64.
TERMS = clip_terms(
    tower_terms(3 * 32 * 32, 768, 12, 50, 3072, 64), tower_terms(1, 512, 12, 77, 2048, 64), 512
)


def test_vit_b32_openai_layout_and_hf_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    peer = perturb(open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True))
    path = tmp_path / "ViT-B-32.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, path)
    ckpt = read_checkpoint(path)
    # Everything about the architecture is recovered from the tensors alone.
    assert ckpt.config == get_model_config("ViT-B-32")
    model = load(path)

    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = get_tokenizer(77)(["a photo of a cat", "a diagram of a transformer on a laptop"])
    assert_parity(ours(model, images, tokens), openclip_outputs(peer, images, tokens), TERMS)

    del peer
    save_checkpoint(model, tmp_path / "hf", "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert_parity(ours(model, images, tokens), hf_outputs(hf, images, tokens), TERMS)
