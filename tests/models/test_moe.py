"""Mixture-of-experts upcycling (``clipforge upcycle``) and the routers' balancing loss."""

import json
import math
from dataclasses import replace

import pytest
import torch

from clipforge.cli.main import main
from clipforge.models import CLIP, get_model_config, load, save_checkpoint
from clipforge.models.moe import MoEMLP, aux_loss, upcycle
from clipforge.train import TrainConfig, train
from tests.conftest import MICRO_ARGS
from tests.tolerance import reorder_bound

F64 = torch.float64
MOE = {**MICRO_ARGS, "moe_experts": 4, "moe_top_k": 2}


def _dense() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_model_config("tiny", MICRO_ARGS)).double().eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16, dtype=F64), torch.randint(1, 400, (3, 24))


def test_an_upcycled_mlp_computes_the_dense_mlp():
    dense = _dense()
    moe = upcycle(dense, 4, 2).eval()
    block, dense_block = moe.visual.transformer.blocks[0], dense.visual.transformer.blocks[0]
    assert isinstance(block.mlp, MoEMLP) and len(block.mlp.experts) == 4
    x = torch.randn(2, 17, 32, dtype=F64)
    with torch.no_grad():
        ref, got = dense_block.mlp(x), block.mlp(x)
    # Each token's output is w1 y + w2 y with y the dense output (the experts are copies)
    # and w = p / (p1 + p2): w1 + w2 = 1 to 3 roundings, then two products and a sum;
    # the expert's matmul on a subset of rows may sum in another order (width 32 and
    # hidden 128 terms).
    tol = reorder_bound(32 + 128 + 6, float(ref.abs().max()) * 10, F64)
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)


def test_the_upcycled_model_equals_the_dense_one():
    dense = _dense()
    moe = upcycle(dense, 4, 2).eval()
    images, tokens = _inputs()
    with torch.no_grad():
        a, b = dense(images, tokens), moe(images, tokens)
    # The MLPs agree to rounding (above); the rest is the same arithmetic. The bound of
    # tests/train/test_distributed.py for one forward of this model (10^4 terms behind an
    # entry, cancellation up to 10^3) covers the embeddings, which are unit vectors.
    tol = reorder_bound(10_000, 1_000, F64)
    torch.testing.assert_close(b.image, a.image, atol=tol, rtol=0)
    torch.testing.assert_close(b.text, a.text, atol=tol, rtol=0)


def test_balancing_loss_by_hand():
    # Two experts, top 1; both tokens have router logits (log 3, 0): probabilities
    # (0.75, 0.25), both go to expert 0. f = (1, 0), P = (0.75, 0.25): E f.P = 2 x 0.75.
    layer = MoEMLP(2, 4, "gelu", 2, 1).double()
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=F64))
    layer(torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=F64))
    assert float(layer.last_aux.detach()) == pytest.approx(
        1.5, rel=0, abs=reorder_bound(8, 2.0, F64)
    )
    # Balanced: tokens split over the experts by opposite logits; P = (0.5, 0.5), f = (.5, .5).
    layer(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=F64))
    assert float(layer.last_aux.detach()) == pytest.approx(
        1.0, rel=0, abs=reorder_bound(8, 2.0, F64)
    )


def test_upcycled_checkpoint_loads_and_fine_tunes(tmp_path):
    dense = _dense().float()
    dense_path, moe_path = tmp_path / "dense.pt", tmp_path / "moe.pt"
    save_checkpoint(dense, dense_path, "clipforge")
    argv = ["upcycle", str(dense_path), "--experts", "4", "--top-k", "2", "--out", str(moe_path)]
    assert main(argv) == 0
    loaded = load(moe_path)
    assert loaded.cfg.moe_experts == 4 and loaded.cfg.moe_top_k == 2
    assert isinstance(loaded.text.transformer.blocks[0].mlp, MoEMLP)
    assert main(["upcycle", str(dense_path), "--experts", "2", "--top-k", "3",
                 "--out", str(tmp_path / "bad.pt")]) == 2  # fmt: skip
    cfg = TrainConfig(
        model_args=MOE, init=str(moe_path), batch_size=8, steps=2, warmup=1, log_every=1,
        eval_every=0, evals="none", threads=1, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    aux = [r["moe_aux_loss"] for r in rows if "loss" in r]
    # Two MoE layers (one block per tower), routers near uniform at the start: each
    # layer's balancing loss is near its balanced value 1.
    assert len(aux) == 2 and all(1.5 < a < 2.5 for a in aux), aux
    # The experts started as copies; routed different tokens, they diverge.
    experts = load(run).visual.transformer.blocks[0].mlp.experts
    assert not torch.equal(experts[0].fc1.weight, experts[1].fc1.weight)
    # Without the balancing loss the run computes another loss: the term is trained on.
    again = train(replace(cfg, moe_aux_weight=0.0, out=str(tmp_path / "run0")))
    rows0 = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert rows0[0]["loss"] == rows[0]["loss"]  # the logged loss is the objective's alone
    assert aux_loss(dense) is None  # a dense model has no balancing loss


def _diverged_moe() -> CLIP:
    """An upcycled micro model whose experts differ and whose routers spread tokens, as
    after fine-tuning: a mix of the wrong experts then shows in the outputs."""
    torch.manual_seed(2)
    moe = upcycle(_dense().float(), 4, 2)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if ".experts." in name:
                p.add_(torch.randn_like(p) * 0.05)
            elif name.endswith("router.weight"):
                p.normal_(std=1.0)  # the fresh routers' 0.02 sends near-equal tokens alike
    return moe.eval()


def test_dense_dispatch_equals_the_routed_experts(monkeypatch):
    layer = _diverged_moe().double().visual.transformer.blocks[0].mlp
    x = torch.randn(3, 17, 32, dtype=F64)
    with torch.no_grad():
        routed = layer(x)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        dense = layer(x)
    assert (layer.last_share > 0).sum() >= 3  # the routers do spread the tokens
    # The same experts' outputs times the same weights, summed in the same expert order
    # (zero gates add exactly); only an expert's matmul over all rows instead of its own
    # may sum in another order (32 then 128 terms per entry).
    tol = reorder_bound(32 + 128 + 4, float(routed.abs().max()) * 10, F64)
    torch.testing.assert_close(dense, routed, atol=tol, rtol=0)


def test_an_moe_model_exports_to_onnx_with_token_merging(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    moe = _diverged_moe()
    ckpt, out = tmp_path / "moe.pt", tmp_path / "onnx"
    save_checkpoint(moe, ckpt, "clipforge")
    argv = ["export", str(ckpt), "--to", "onnx", "--merge-tokens", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "merges 3 tokens" in (out / "model.yaml").read_text().splitlines()[0]
    model = load(ckpt)
    g = torch.Generator().manual_seed(3)
    # Another batch size than the export's example (2): the batch axis stays dynamic.
    pixels = torch.randn(5, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 400, (5, 24), generator=g)
    tokens[torch.arange(5), torch.tensor([3, 7, 23, 1, 12])] = 49407  # end tokens
    with torch.no_grad():
        plain_image = model.encode_image(pixels, normalize=True).numpy()
        model.visual.merge_tokens = 3
        want_image = model.encode_image(pixels, normalize=True).numpy()
        want_text = model.encode_text(tokens, normalize=True).numpy()
    got_image = ort.InferenceSession(str(out / "image.onnx")).run(None, {"pixels": pixels.numpy()})[
        0
    ]
    got_text = ort.InferenceSession(str(out / "text.onnx")).run(None, {"tokens": tokens.numpy()})[0]
    # The 1e-4, as for the dense export (tests/models/test_wise_export.py): the
    # rounding bound of about 10^3 terms behind each unit-scale entry is 1.2e-4. The
    # gates add one product and the mixture a sum of 2 terms per entry, well inside.
    tol = 1e-4
    assert tol <= reorder_bound(1000, 1.0)
    assert abs(got_image - want_image).max() <= tol
    assert abs(got_text - want_text).max() <= tol
    # The merging is in the graph: a graph without it would be within tol of the
    # unmerged features.
    assert abs(got_image - plain_image).max() > tol


def test_lora_on_an_moe_model_adapts_every_expert_and_merges(tmp_path):
    from clipforge.models.lora import apply_adapters, load_adapters

    moe_path = tmp_path / "moe.pt"
    save_checkpoint(_diverged_moe(), moe_path, "clipforge")
    cfg = TrainConfig(
        model_args=MOE, init=str(moe_path), lora_rank=2, lora_alpha=4.0, batch_size=8,
        steps=2, warmup=1, eval_every=0, evals="none", threads=1, progress=False,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(cfg)
    adapters = load_adapters(run / "adapters.safetensors")
    # Per tower (one block): qkv 32 -> 96, proj 32 -> 32, and in each of the 4 experts
    # fc1 32 -> 128 and fc2 128 -> 32; each adapter holds r x (in + out).
    per_tower = 2 * (128 + 64 + 4 * (160 + 160))
    assert sum(v.numel() for k, v in adapters.items() if not k.endswith("lora_scale")) == (
        2 * per_tower
    )
    assert {k for k in adapters if ".mlp.experts.3.fc2." in k}  # every expert has its own
    assert not any("router" in k for k in adapters)
    start = load(moe_path).state_dict()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k, v in start.items():  # routers and experts frozen, bit for bit
        if "running_" not in k and "num_batches" not in k:  # the conv stem's batch norm
            assert torch.equal(last[k], v), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapters.items()
               if k.endswith("lora_b"))  # fmt: skip

    # The adapted model (the frozen weights plus the adapters) against the merged one.
    unmerged = CLIP(get_model_config("tiny", MOE))
    unmerged.load_state_dict({k: v for k, v in last.items() if k in start})
    apply_adapters(unmerged, adapters).eval()
    merged = load(run)
    assert not any("lora" in k for k in merged.state_dict())
    g = torch.Generator().manual_seed(0)
    images, tokens = torch.randn(8, 3, 16, 16, generator=g), torch.randint(1, 400, (8, 24))
    with torch.no_grad():
        for enc, x in (("encode_image", images), ("encode_text", tokens)):
            a = getattr(unmerged, enc)(x, normalize=True)
            b = getattr(merged, enc)(x, normalize=True)
            # The 1e-5 for a merged LoRA model in float32 (tests/train/
            # test_finetune.py); the routers see the same inputs to rounding.
            assert float((a - b).abs().max()) <= 1e-5, enc
