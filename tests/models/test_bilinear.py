"""Second-order token pooling: the arithmetic, what it keeps that a mean forgets, its
zero start, and where it is refused."""

import json

import pytest
import torch

from clipforge.cli.main import main
from clipforge.errors import ClipforgeError
from clipforge.models import create_model, load
from clipforge.models.bilinear import BilinearPool
from clipforge.models.convert.arch import hf_kind_of, openclip_config
from tests.conftest import MICRO_ARGS_CLI
from tests.tolerance import reorder_bound


def _tokens() -> torch.Tensor:
    t = torch.zeros(3, 24, dtype=torch.long)
    for i, n in enumerate((3, 9, 6)):
        t[i, 0], t[i, 1 : n - 1], t[i, n - 1] = 49406, torch.arange(400, 400 + n - 2), 49407
    return t


@pytest.mark.parametrize("lag", [0, 1])
def test_matches_the_formula_with_a_mask(lag):
    torch.manual_seed(0)
    pool = BilinearPool(6, 4, 3, lag=lag).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = pool(x, mask)
    for r in range(2):
        keep = x[r][mask[r]]  # the kept tokens are a prefix, so neighbours stay neighbours
        h = torch.nn.functional.layer_norm(keep, (6,), pool.norm.weight, pool.norm.bias, 1e-5)
        later, earlier = (h[lag:], h[: len(h) - lag])
        z = (later @ pool.a.weight.T) * (earlier @ pool.b.weight.T)
        want = pool.out.weight @ z.mean(dim=0)
        # float64, the same products summed in another order: a LayerNorm over 6, two
        # 6-term projections, a product, a mean of up to 5 and a 4-term projection.
        tol = reorder_bound(6 + 6 + 5 + 4 + 8, float(z.abs().max()) * 4 * 10, torch.float64)
        assert torch.allclose(got[r], want, rtol=0, atol=tol)


def test_keeps_what_a_mean_forgets():
    # Tokens that add a colour and a shape: "red square, blue circle" and the colour swap
    # "blue square, red circle" have the same mean, exactly (the same four vectors are
    # summed, in float64 with small integers: no rounding at all).
    g = torch.Generator().manual_seed(1)
    red, blue, square, circle = torch.randint(-3, 4, (4, 8), generator=g).double()
    scene = torch.stack([red + square, blue + circle])[None]
    swap = torch.stack([blue + square, red + circle])[None]
    assert torch.equal(scene.mean(dim=1), swap.mean(dim=1))
    torch.manual_seed(0)
    pool = BilinearPool(8, 8, 4).double()
    a, b = pool(scene), pool(swap)
    # Their difference is the cross terms, of order one per unit vector: far above
    # rounding (float64, a few dozen terms of order 10).
    assert float((a - b).abs().max()) > 1e3 * reorder_bound(64, 100.0, torch.float64)


def test_bigrams_keep_adjective_with_noun():
    # Caption tokens as word vectors: "red square blue circle", its reordering "blue circle
    # red square" and the swap "blue square red circle". The neighbour products of the
    # first two hold the same binding bigrams; the swap's do not.
    g = torch.Generator().manual_seed(2)
    red, blue, square, circle = torch.randint(-3, 4, (4, 8), generator=g).double()
    pool = BilinearPool(8, 8, 4, lag=1).double()
    caption = pool(torch.stack([red, square, blue, circle])[None])
    reordered = pool(torch.stack([blue, circle, red, square])[None])
    swap = pool(torch.stack([blue, square, red, circle])[None])
    # The reordering changes one of three bigrams (square-blue for circle-red), the swap
    # all three.
    assert float((caption - swap).norm()) > float((caption - reordered).norm())


def test_with_its_output_at_zero_the_tower_embeds_as_without_it(micro_args):
    torch.manual_seed(0)
    plain = create_model("tiny", {**micro_args, "vision.pool": "cls"}).eval()
    torch.manual_seed(0)
    both = create_model(
        "tiny", {**micro_args, "vision.pool": "cls", "vision.bilinear": 8, "text.bilinear": 8}
    ).eval()
    missing, unexpected = both.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("bilinear" in k for k in missing)
    # It starts on (a zero start stays too small in a short run): zero it to compare.
    assert float(both.visual.bilinear.out.weight.abs().sum()) > 0
    torch.nn.init.zeros_(both.visual.bilinear.out.weight)
    torch.nn.init.zeros_(both.text.bilinear.out.weight)
    images, tokens = torch.randn(2, 3, 16, 16), _tokens()
    with torch.no_grad():
        # The plain towers pool one token early; the term needs every token, so compare
        # with their full pass: the same arithmetic, and the term adds an exact zero.
        assert torch.equal(both.visual(images), plain.visual(images, with_tokens=True)[0])
        assert torch.equal(both.text(tokens), plain.text(tokens, with_tokens=True)[0])
    assert not both.visual.pools_early() and plain.visual.pools_early()


def test_text_term_reads_the_caption_only(micro_args):
    torch.manual_seed(0)
    m = create_model("tiny", {**micro_args, "text.bilinear": 8, "text.causal": False,
                              "text.pool": "last"}).double()  # fmt: skip
    tokens = _tokens()
    # Bidirectional attention sees the padding, so compare the pool on the tower's own
    # tokens: the masked pool over the caption equals the pool over those tokens alone.
    with torch.no_grad():
        x = m.text.transformer(m.text.add_positions(m.text.token_embed(tokens)), causal=False)
        own = torch.zeros_like(tokens, dtype=torch.bool)
        own[0, :3] = True
        got = m.text.bilinear(x[:1], own[:1])
        alone = m.text.bilinear(x[:1, :3])
    assert torch.allclose(got, alone, rtol=0, atol=reorder_bound(32, 10.0, torch.float64))


def test_peer_formats_refuse_it(micro_args):
    cfg = create_model("tiny", {**micro_args, "text.bilinear": 4}).cfg
    with pytest.raises(ClipforgeError, match="bilinear"):
        openclip_config(cfg)
    with pytest.raises(ClipforgeError, match="bilinear"):
        hf_kind_of(cfg)


def test_token_merging_refuses_it(micro_args):
    m = create_model("tiny", {**micro_args, "vision.bilinear": 4}).eval()
    m.visual.merge_tokens = 2
    with pytest.raises(ClipforgeError, match="bilinear"):
        m.encode_image(torch.randn(1, 3, 16, 16))


def test_cli_trains_and_reloads_it(tmp_path, monkeypatch):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    out = tmp_path / "run"
    args = ["train", "--model-args", MICRO_ARGS_CLI + ",vision.bilinear=8,text.bilinear=8",
            "--steps", "2", "--batch-size", "16", "--warmup", "1", "--log-every", "1",
            "--eval-every", "0", "--eval-per-class", "1", "--eval-pairs", "16",
            "--progress", "false", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("skipped", 0) == 0 for r in rows if "loss" in r)
    model = load(out)
    assert model.cfg.vision.bilinear == 8 and model.cfg.text.bilinear == 8
    # The terms were saved and read back: the loaded model embeds as the run's last weights.
    state = torch.load(out / "checkpoints" / "final.pt", weights_only=False)
    weights = state.get("model", state)
    for k in ("visual.bilinear.out.weight", "text.bilinear.out.weight"):
        assert torch.equal(model.state_dict()[k], weights[k])
