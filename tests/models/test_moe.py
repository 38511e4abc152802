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
