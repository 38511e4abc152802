"""``--compile``: a compiled training run runs, saves eager-named weights and computes
the eager run's first loss."""

import functools
import json
from dataclasses import replace

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import load
from clipforge.train import TrainConfig, fsdp, train
from clipforge.train.distributed import World
from tests.conftest import MICRO_ARGS
from tests.tolerance import reorder_bound
from tests.train.test_distributed import CANCEL, TERMS

RUN = TrainConfig(
    model_args=MICRO_ARGS, batch_size=8, steps=2, warmup=1, log_every=1, eval_every=0,
    evals="none", threads=1, progress=False, precision="fp64",
)  # fmt: skip


def _losses(run) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_a_compiled_run_trains_like_an_eager_one(tmp_path, monkeypatch):
    # Dynamo traces the model as --compile does; the aot_eager backend runs the traced
    # graphs with ATen's kernels instead of generating C++, which on a loaded 2-core
    # machine takes minutes. What is tested is the trainer's wiring, not inductor.
    real = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real, backend="aot_eager"))
    compiled = train(replace(RUN, compile=True, out=str(tmp_path / "compiled")))
    eager = train(replace(RUN, out=str(tmp_path / "eager")))
    a, b = _losses(eager), _losses(compiled)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        # The same operations, perhaps fused or reordered: the rounding bound of one
        # forward of this model (tests/train/test_distributed.py).
        assert y == pytest.approx(
            x, rel=0, abs=reorder_bound(TERMS, CANCEL * (1 + x), torch.float64)
        )
    # The checkpoint holds the plain module's names (no torch.compile prefix) and loads.
    saved = torch.load(compiled / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert not any("_orig_mod" in k for k in saved)
    assert load(compiled).state_dict().keys() == saved.keys()


def test_compile_is_refused_with_fsdp():
    with pytest.raises(ClipforgeError, match="--fsdp cannot be combined with --compile"):
        fsdp.check(replace(RUN, fsdp=True, compile=True), World(rank=0, size=2), None)
