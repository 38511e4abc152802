"""TCA token condensation: keep = 1 is the unmodified tower; fewer tokens, fewer FLOPs."""

from __future__ import annotations

import pytest
import torch

from clipforge.adapt import Shots, fit_shots, make_embedder
from clipforge.adapt.tca import block_flops, condensed_counts, encode_condensed, tower_flops
from clipforge.errors import ClipforgeError
from clipforge.models import create_model


def _model(micro_args, **extra):
    torch.manual_seed(0)
    return create_model("tiny", {**micro_args, "vision.layers": 3, **extra}).eval()


@pytest.mark.parametrize("pool", ["mean", "cls", "map"])
def test_keep_one_is_the_unmodified_tower_bit_for_bit(micro_args, pool):
    model = _model(micro_args, **{"vision.pool": pool})
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        want = model.encode_image(x, normalize=True)
        assert torch.equal(encode_condensed(model, x, 1.0, 0, True), want)
        # Condensing changes the features (the test can fail).
        assert not torch.allclose(encode_condensed(model, x, 0.5, 0, True), want, atol=1e-4)


def test_token_counts_and_flops_follow_the_keep_ratio(micro_args):
    model = _model(micro_args)
    # 16 patches, keep 0.5, condensing after blocks 0 and 1 of 3, merging:
    # block 0 sees 1 + 16; then 8 kept + 1 fused -> 1 + 9 = 10; then ceil(0.5 * 9) = 5 kept
    # + 1 fused -> 1 + 6 = 7.
    assert condensed_counts(16, 3, 0.5, 0, True) == [17, 10, 7]
    assert condensed_counts(16, 3, 0.5, 0, False) == [17, 9, 5]
    assert condensed_counts(16, 3, 1.0, 0, True) == [17, 17, 17]
    seen: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
             for b in model.visual.transformer.blocks]  # fmt: skip
    with torch.no_grad():
        encode_condensed(model, torch.rand(2, 3, 16, 16), 0.5, 0, True)
    for h in hooks:
        h.remove()
    # The condensing blocks run by hand (their pre-hook does not fire); the last one is a call.
    assert seen == [7]
    # Width 32, MLP 128: 8 n w^2 + 4 n^2 w + 4 n w h (+ 2 n w for a class-attention row).
    # n = 17: 139264 + 36992 + 278528 = 454784 (+ 1088); n = 10: 81920 + 12800 + 163840 =
    # 258560 (+ 640); n = 7: 57344 + 6272 + 114688 = 178304.
    assert block_flops(17, 32, 128) == 454784
    assert tower_flops(model.cfg, 0.5, 0, True) == 454784 + 1088 + 258560 + 640 + 178304
    assert tower_flops(model.cfg, 1.0, 0, True) == 3 * 454784


def test_tca_adapter_scores_images_and_refuses_features(micro_args):
    model = _model(micro_args)
    emb = make_embedder(model)
    names = ["red hexagon", "pink circle"]
    text = emb.classifier(names, ["a photo of a {}."])
    x = torch.zeros(2, 32)
    s = Shots(x, torch.tensor([0, 1]), torch.arange(2), torch.tensor([], dtype=torch.long),
              text, 10.0, names, 0, (), emb)  # fmt: skip
    pixels = torch.rand(3, 3, 16, 16)
    full = fit_shots("tca", s, keep=1.0)
    with torch.no_grad():
        want = 10.0 * model.encode_image(pixels, normalize=True) @ text.T
    assert torch.equal(full.logits(pixels), want)
    half = fit_shots("tca", s, keep=0.5, start=0)
    assert half.params["gflops"] < half.params["gflops_full"] == full.params["gflops"]
    with pytest.raises(ClipforgeError, match="pass images, not features"):
        half.logits(torch.zeros(3, 32))
    with pytest.raises(ClipforgeError, match="has 3 blocks"):
        fit_shots("tca", s, start=3)
