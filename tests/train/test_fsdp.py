"""``--fsdp``: two gloo processes shard the model and compute DDP's training run.

One spawn of two processes (a module fixture) trains the same run with FSDP and with
DDP, and an FSDP run that crashes and resumes; the tests compare their files here.
"""

import json
import os
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, get_model_config, load
from clipforge.train import TrainConfig, distributed, fsdp, train
from clipforge.train import trainer as trainer_module
from clipforge.train.distributed import World
from tests.conftest import MICRO_ARGS, MICRO_ARGS_CLI
from tests.tolerance import reorder_bound
from tests.train.test_distributed import (
    CANCEL,
    CRASH_AFTER,
    TERMS,
    _Crash,
    _crash_after,
    dist_env,
    free_port,
    run_metrics,
    run_weights,
)

WORLD = 2
# Several captions per image, hard negatives, accumulation and per-rank loss shares, in
# float64 so that FSDP and DDP differ only by the order of additions.
RUN = TrainConfig(
    model_args=MICRO_ARGS, batch_size=12, steps=4, warmup=1, accum_steps=2, caption="all",
    hard_negatives="relation,attribute", local_loss=True, ckpt_every=2, log_every=1,
    eval_every=0, eval_per_class=1, eval_pairs=20, threads=1, progress=False,
    precision="fp64", fsdp=True,
)  # fmt: skip


def _worker(rank: int, ports: tuple[int, int, int], out: str) -> None:
    dist_env(rank, WORLD, ports[0])
    out_dir = Path(out)
    world = distributed.setup("gloo")
    try:
        torch.manual_seed(0)
        model = fsdp.shard(CLIP(get_model_config("tiny", MICRO_ARGS)), world)
        torch.save(fsdp.local_share(model), out_dir / f"share{rank}.pt")
        train(replace(RUN, out=str(out_dir / "fsdp")))
        train(replace(RUN, fsdp=False, out=str(out_dir / "ddp")))
    finally:
        distributed.teardown(world)
    # From here on train() joins and leaves the group itself, as under torchrun: a run
    # that raises tears the group down while its exception is still in flight.
    real = trainer_module.iter_batches
    real_shard, real_destroy = fsdp.shard, distributed.dist.destroy_process_group
    crashed: list[weakref.ref] = []
    alive_at_destroy: list[int] = []

    def recording_shard(m: torch.nn.Module, w: World) -> torch.nn.Module:
        sharded = real_shard(m, w)
        crashed.append(weakref.ref(sharded))
        return sharded

    def recording_destroy(*args, **kwargs):
        alive_at_destroy.append(sum(r() is not None for r in crashed))
        return real_destroy(*args, **kwargs)

    _crash_after(CRASH_AFTER)
    fsdp.shard = recording_shard
    distributed.dist.destroy_process_group = recording_destroy
    os.environ["MASTER_PORT"] = str(ports[1])
    try:
        train(replace(RUN, out=str(out_dir / "crashed")))
    except _Crash:
        pass
    finally:
        trainer_module.iter_batches, fsdp.shard = real, real_shard
        distributed.dist.destroy_process_group = real_destroy
    # The crashed run's sharded model, which only the cyclic collector frees once the
    # exception's frames let go of it: it must be gone before the group is.
    record = {"sharded": len(crashed), "alive_at_destroy": alive_at_destroy}
    (out_dir / f"crashed_alive{rank}.json").write_text(json.dumps(record))
    os.environ["MASTER_PORT"] = str(ports[2])
    train(RUN, resume=out_dir / "crashed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    ports = (free_port(), free_port(), free_port())
    mp.start_processes(_worker, (ports, str(out)), nprocs=WORLD, start_method="spawn")
    return out


def test_each_process_holds_half_the_parameters(runs):
    shares = [torch.load(runs / f"share{r}.pt") for r in range(WORLD)]
    total = shares[0][1]
    # Each tensor splits into WORLD row blocks; the 0-d temperature stays on both ranks,
    # and a tensor with fewer rows than ranks cannot split evenly: a few entries over half.
    assert sum(held for held, _ in shares) >= total
    for held, _ in shares:
        assert abs(held - total / WORLD) <= 0.01 * total, (held, total)


def test_fsdp_run_equals_ddp_run(runs):
    a, b = run_metrics(runs / "ddp"), run_metrics(runs / "fsdp")
    weight_tol = 0.0
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        if "loss" not in ra:
            continue
        # The loss is a forward pass: the same rounding bound as one step's loss (the
        # reasoning of tests/train/test_distributed.py, whose TERMS and CANCEL it uses).
        tol = reorder_bound(TERMS, CANCEL * (1 + ra["loss"]), torch.float64)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=0, abs=tol), ra["step"]
        assert rb["samples"] == ra["samples"]
        # The gradient norm sums the squares of every gradient entry once more.
        g_tol = reorder_bound(TERMS + 2e6, CANCEL * (1 + ra["grad_norm"]), torch.float64)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=0, abs=g_tol)
        # AdamW turns a gradient difference dg into an update difference of at most
        # lr * dg / eps (the eps of its denominator); max|g| <= the gradient's norm.
        dg = reorder_bound(TERMS, CANCEL * (1 + ra["grad_norm"]), torch.float64)
        weight_tol += ra["lr"] * dg / RUN.eps
    assert [r["step"] for r in b if "loss" in r] == [1, 2, 3, 4]
    wa, wb = run_weights(runs / "ddp"), run_weights(runs / "fsdp")
    assert wa.keys() == wb.keys()
    torch.manual_seed(RUN.seed)  # the run's initial weights, as the trainer draws them
    start = CLIP(get_model_config("tiny", MICRO_ARGS)).double().state_dict()
    moved = 0.0
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=weight_tol, rtol=0, msg=k)
        moved = max(moved, float((wa[k] - start[k]).abs().max()))
    assert moved > 10 * weight_tol  # the bound is well below what 4 steps change


def test_fsdp_resume_is_bit_identical(runs):
    whole, resumed = run_weights(runs / "fsdp"), run_weights(runs / "crashed")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert run_metrics(runs / "fsdp") == run_metrics(runs / "crashed")


def test_a_crashed_runs_model_is_freed_before_the_group_goes(runs):
    records = [json.loads((runs / f"crashed_alive{r}.json").read_text()) for r in range(WORLD)]
    assert records == [{"sharded": 1, "alive_at_destroy": [0]}] * WORLD


def test_fsdp_checkpoint_loads_without_fsdp(runs):
    saved = run_weights(runs / "fsdp")
    model = load(runs / "fsdp")  # a plain model in this single process
    assert not any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k].to(v.dtype)), k  # load() gives float32
    last = torch.load(runs / "fsdp" / "checkpoints" / "last.pt", weights_only=True)
    assert last["model"].keys() == saved.keys()
    assert all(v.shape == saved[k].shape for k, v in last["model"].items())


def test_fsdp_refusals(tmp_path):
    with pytest.raises(ClipforgeError, match="under torchrun"):
        train(replace(RUN, out=str(tmp_path / "a")))
    two = World(rank=0, size=2)
    from clipforge.losses import get_loss

    objective = get_loss("clip").build(RUN)
    for change, flag in (
        ({"ema_decay": 0.9}, "--ema-decay"),
        ({"lora_rank": 4}, "--lora-rank"),
        ({"lock_image": True}, "--lock-image"),
    ):
        with pytest.raises(ClipforgeError, match=f"cannot be combined with {flag}"):
            fsdp.check(replace(RUN, **change), two, objective)
    fsdp.check(RUN, two, objective)  # the run above is allowed


def test_torchrun_cli_fsdp(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "-m", "clipforge.train",
        "--model-args", MICRO_ARGS_CLI, "--fsdp", "true",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--log-every", "1",
        "--eval-every", "0", "--eval-per-class", "1", "--eval-pairs", "20",
        "--threads", "1", "--progress", "false", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = run_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert rows[-1]["final"] and "zeroshot/top1" in json.dumps(rows[-1])
    assert load(out).cfg == get_model_config("tiny", MICRO_ARGS)
