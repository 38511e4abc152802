"""Token merging at inference (``merge_tokens``, ToMe's bipartite soft matching)."""

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, get_model_config
from clipforge.models.config import VisionConfig
from clipforge.models.tome import bipartite_merge, merged_forward, token_schedule, vision_gflops
from tests.conftest import MICRO_ARGS
from tests.tolerance import reorder_bound

F64 = torch.float64
# 16 patches + the class token, three blocks.
THREE = {**MICRO_ARGS, "vision.layers": 3}


def _model(args: dict = THREE) -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_model_config("tiny", args)).double().eval()


def _images(n: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, 16, 16, dtype=F64)


def test_r0_is_the_model_bit_for_bit():
    model, images = _model(), _images()
    with torch.no_grad():
        plain = model.encode_image(images)
        model.visual.merge_tokens = 0
        assert torch.equal(model.encode_image(images), plain)


def test_merged_path_without_merges_computes_the_blocks():
    # The merging forward with r = 0 only adds a zero bias (log 1) to the attention
    # logits: the same arithmetic, maybe in another kernel's summation order. Each entry
    # sums over width 32, the 17 attention terms and the MLP's 128 hidden units per
    # block, three blocks: ~600 terms of magnitude <= the activations' scale (~10).
    model, images = _model(), _images()
    v = model.visual
    x = v.norm_pre(v.patch_embed(images).flatten(2).transpose(1, 2))
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.pos_embed
    with torch.no_grad():
        ref = v.transformer(x)
        got, size = merged_forward(v.transformer, x, 0, 1)
    assert torch.equal(size, torch.ones_like(size))
    tol = reorder_bound(600, 10 * float(ref.abs().max()), F64)
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)


def test_bipartite_merge_by_hand():
    # Tokens: class, a0, b0, a1, b1 (A and B alternate after the class token). Metrics:
    # a0 ~ b0 (cosine 0.995), a1's best is b0 too but at cosine 0.0995: with r = 1 only a0
    # merges, into b0, as the size-weighted mean (1 x a0 + 1 x b0) / 2.
    x = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 6.0], [5.0, 5.0], [7.0, 0.0]]], dtype=F64)
    metric = torch.tensor(
        [[[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]]], dtype=F64
    )
    size = torch.ones(1, 5, 1, dtype=F64)
    got, got_size = bipartite_merge(x, metric, size, 1, 1)
    # Class token first, then the A tokens kept (a1), then B (merged b0, b1).
    assert got.tolist() == [[[9.0, 9.0], [5.0, 5.0], [2.0, 4.0], [7.0, 0.0]]]
    assert got_size.flatten().tolist() == [1.0, 1.0, 2.0, 1.0]
    # A second merge weighs by size. Now A = (a1, b1), B = (b0'); a1 (size 1) goes into
    # b0' (size 2): (5 + 2 x 2) / 3, and b1, kept, comes before it.
    again, again_size = bipartite_merge(got, torch.cat([metric[:, :1], metric[:, 3:4],
                                        metric[:, 2:3], metric[:, 4:]], dim=1), got_size, 1, 1)  # fmt: skip
    assert again_size.flatten().tolist() == [1.0, 1.0, 3.0]
    assert again[0, 1].tolist() == [7.0, 0.0]
    assert again[0, 2].tolist() == [(5 + 2 * 2) / 3, (5 + 2 * 4) / 3]


def test_the_class_token_is_never_merged():
    # The class token's metric equals a patch's exactly (the best possible match), and
    # every merge possible is asked for: it still stays, first, alone.
    x = torch.randn(2, 9, 4, dtype=F64)
    metric = torch.randn(2, 9, 3, dtype=F64)
    metric[:, 0] = metric[:, 2]
    got, size = bipartite_merge(x, metric, torch.ones(2, 9, 1, dtype=F64), 100, 1)
    assert torch.equal(got[:, 0], x[:, 0]) and size[:, 0].flatten().tolist() == [1.0, 1.0]
    assert got.shape[1] == 5 and size.sum(dim=1).flatten().tolist() == [9.0, 9.0]


@pytest.mark.parametrize(("r", "counts"), [(3, [14, 11, 8]), (6, [11, 6, 4]), (100, [9, 5, 3])])
def test_token_count_after_each_block(r, counts):
    # 17 tokens, the class token kept: a block merges min(r, (n - 1) // 2) of them.
    assert token_schedule(17, 3, r, 1) == counts
    model, images = _model(), _images()
    seen = []
    for blk in model.visual.transformer.blocks:
        blk.mlp.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    model.visual.merge_tokens = r
    with torch.no_grad():
        out = model.encode_image(images)
    assert seen == counts and out.shape == (3, model.cfg.embed_dim)


def test_merging_changes_the_embedding_only_at_inference():
    model, images = _model(), _images()
    with torch.no_grad():
        plain = model.encode_image(images, normalize=True)
        model.visual.merge_tokens = 4
        merged = model.encode_image(images, normalize=True)
        model.train()  # training sees every token (merging is an inference setting)
        trained = model.encode_image(images, normalize=True)
    assert 1e-6 < float((merged - plain).abs().max()) < 0.5  # close, not equal
    model.eval()
    model.visual.merge_tokens = 0
    with torch.no_grad():
        assert torch.allclose(trained, model.train().encode_image(images, normalize=True))


def test_grid_pooling_refuses_merging():
    from clipforge.models.tome import set_merging

    model = _model({**THREE, "vision.pool": "grid"})
    with pytest.raises(ClipforgeError, match="--merge-tokens cannot be used with vision.pool=grid"):
        set_merging(model, 2)
    model.visual.merge_tokens = 2  # set directly, the tower refuses too
    with pytest.raises(ClipforgeError, match="pool=grid"):
        model.encode_image(_images())


def test_gflops_by_hand():
    # 2 x 2 patches + class = 5 tokens, width 4, mlp ratio 4, 2 blocks, r = 1:
    # block 1: 4*5*16 + 2*25*4 + 2*4*4*16 (after: 4 tokens) = 320 + 200 + 512 = 1032
    # block 2: 4*4*16 + 2*16*4 + 2*4*3*16 (after: 3)        = 256 + 128 + 384 = 768
    cfg = VisionConfig(image_size=8, patch_size=4, width=4, layers=2, heads=1)
    assert vision_gflops(cfg, 1) == pytest.approx(2 * (1032 + 768) / 1e9, rel=1e-12)
    # r = 0: 2 x (320 + 200 + 640) per block
    assert vision_gflops(cfg, 0) == pytest.approx(2 * 2 * 1160 / 1e9, rel=1e-12)


def test_merging_is_part_of_the_cache_key_and_a_cli_flag(micro_checkpoint, tmp_path, capsys):
    from clipforge.cli.main import main
    from clipforge.eval.embed import model_fingerprint
    from clipforge.models import load
    from clipforge.models.tome import set_merging

    model = load(micro_checkpoint)
    plain = model_fingerprint(model)
    set_merging(model, 2)
    assert model_fingerprint(model) != plain  # cached features of r = 0 are not reused
    set_merging(model, 0)
    assert model_fingerprint(model) == plain
    out = {r: tmp_path / f"r{r}.json" for r in (0, 4)}
    for r, path in out.items():
        args = ["eval", str(micro_checkpoint), "--merge-tokens", str(r), "--per-class", "2",
                "--pairs", "20", "--progress", "false", "--out", str(path)]  # fmt: skip
        assert main(args) == 0
    import json

    a, b = (json.loads(p.read_text()) for p in out.values())
    assert a.keys() == b.keys()
    assert main(["eval", str(micro_checkpoint), "--merge-tokens", "-1"]) == 2
    assert "--merge-tokens" in capsys.readouterr().err
