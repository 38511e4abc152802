"""Several gloo processes compute the loss, gradients and training run of one process.

One spawn of three processes (a module fixture) runs every distributed job; the tests
compare its results with the same work done here in one process. Three, not two: with
two, "the next rank" and "the previous rank" of the SigLIP ring are the same process.
"""

import faulthandler
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.data.batches import Batch
from clipforge.errors import ClipforgeError
from clipforge.losses import get_loss
from clipforge.models import CLIP, get_model_config
from clipforge.train import TrainConfig, distributed, train
from clipforge.train import trainer as trainer_module
from clipforge.train.distributed import World
from clipforge.train.step import batch_loss
from tests.conftest import MICRO_ARGS, MICRO_ARGS_CLI, TEST_THREADS
from tests.tolerance import reorder_bound
from tests.train.batches import B, mixed_batch

WORLD = 3
# name -> (loss, hard negatives and weights?, local loss?, chunked?)
CASES = {
    "clip": ("clip", False, False, False),
    "clip-local": ("clip", False, True, False),
    "clip-hard": ("clip", True, False, False),
    "clip-hard-local": ("clip", True, True, False),
    "siglip": ("siglip", False, False, False),
    "siglip-local": ("siglip", False, True, False),
    "siglip-chunked": ("siglip", False, False, True),
    "siglip-hard": ("siglip", True, False, False),
    "siglip-hard-local": ("siglip", True, True, False),
    "siglip-hard-chunked": ("siglip", True, False, True),
    # Each hard negative against the image it came from: its row must be offset like owner.
    "textneg-hard": ("clip+textneg", True, False, False),
    # Text-only: each negative against its own caption and that image's other captions.
    "textsep-hard": ("clip+textsep", True, False, False),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank: int, size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(TEST_THREADS),
    )  # fmt: skip
    torch.set_num_threads(TEST_THREADS)
    # A worker that aborts in C++ (SIGABRT, SIGSEGV) then prints every thread's Python
    # stack into the test report: it tells a death mid-run from one at interpreter exit.
    faulthandler.enable(all_threads=True)


def _batch(hard: bool) -> Batch:
    return mixed_batch(hard)


def _step(
    case: str, world: World, plain: bool = False, sabotage: str = ""
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one step, in float64; ``plain``: the whole loss, no shares, no
    ring. ``sabotage`` plants a bug the comparison must catch: ``"drop-rank"`` leaves the
    last rank's gradient out of DDP's average."""
    loss_name, hard, local, chunked = CASES[case]
    if plain:
        local = chunked = False
    spec = get_loss(loss_name)
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", MICRO_ARGS), spec.init_logit_scale, spec.init_logit_bias)
    # float64: the split is exact algebra, so the only differences left are rounding, and in
    # float64 those are ~1e9 times smaller than any bug's (see _assert_equal_to_one_process).
    model = model.double()
    objective = spec.build(
        TrainConfig(hard_negative_weight=2.0, hard_negatives="attribute" if hard else "")
    )
    ddp = distributed.wrap_model(model, world)
    b = B // world.size
    part = _batch(hard).rows(slice(world.rank * b, (world.rank + 1) * b))
    part = replace(part, images=part.images.double(), weights=part.weights.double())
    loss, logged = batch_loss(ddp, objective, part, world, local, chunked)
    if sabotage == "drop-rank" and world.rank == world.size - 1:
        loss = loss * 0  # DDP still all-reduces, but this rank's share is gone
    loss.backward()
    return float(logged), {n: p.grad.clone() for n, p in model.named_parameters()}


# Several captions per image, hard negatives (texts per rank differ), accumulation and the
# per-rank loss: the hardest setting for an exact split.
RUN = TrainConfig(
    model_args=MICRO_ARGS, batch_size=12, steps=4, warmup=1, accum_steps=2, caption="all",
    hard_negatives="relation,attribute", local_loss=True, ckpt_every=2, log_every=1,
    eval_every=0, eval_per_class=1, eval_pairs=20, threads=1, progress=False,
    precision="fp64",  # the split is exact algebra: rounding ~1e9 times below any bug
)  # fmt: skip
CRASH_AFTER = 3  # batches; the last checkpoint is at step 2


class _Crash(Exception):
    pass


def _crash_after(n: int) -> None:
    """Make the trainer's data stream fail after ``n`` batches (a crash mid-run)."""
    real = trainer_module.iter_batches

    def limited(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == n:
                raise _Crash
            yield batch

    trainer_module.iter_batches = limited  # type: ignore[assignment]


def _worker(rank: int, port: int, out: str) -> None:
    dist_env(rank, WORLD, port)
    out_dir = Path(out)
    # One process group for all jobs: train() uses a group it finds and leaves it open
    # (under torchrun it creates and destroys its own).
    world = distributed.setup("gloo")
    try:
        torch.save({c: _step(c, world) for c in CASES}, out_dir / f"rank{rank}.pt")
        train(replace(RUN, out=str(out_dir / "whole")))
        real = trainer_module.iter_batches
        _crash_after(CRASH_AFTER)
        try:
            train(replace(RUN, out=str(out_dir / "crashed")))
        except _Crash:
            pass
        trainer_module.iter_batches = real  # type: ignore[assignment]
        train(RUN, resume=out_dir / "crashed")
    finally:
        distributed.teardown(world)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("many")
    mp.start_processes(_worker, (free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return out


def run_metrics(run: Path) -> list[dict]:
    """A run's metrics rows without the wall-clock field (runs differ only in speed)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def run_weights(run: Path, name: str = "final.pt") -> dict[str, torch.Tensor]:
    """The model weights of checkpoint ``name`` of a run folder."""
    return torch.load(run / "checkpoints" / name, weights_only=True)["model"]


def _pair_worker(rank: int, port: int, out: str, sabotage: str = "") -> None:
    dist_env(rank, 2, port)
    world = distributed.setup("gloo")
    try:
        cases = {c: _step(c, world, sabotage=sabotage) for c in CASES}
        torch.save(cases, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown(world)


def test_two_processes_equal_one(tmp_path):
    mp.start_processes(_pair_worker, (free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    _assert_equal_to_one_process([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])


def test_processes_equal_one(many):
    _assert_equal_to_one_process([torch.load(many / f"rank{r}.pt") for r in range(WORLD)])


def test_a_dropped_rank_fails_the_comparison(tmp_path):
    """The tolerance is strict enough to catch a real bug: one rank's gradient missing from
    the average changes the gradients by about half of themselves, not by rounding."""
    mp.start_processes(
        _pair_worker, (free_port(), str(tmp_path), "drop-rank"), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in CASES:
        assert _worst_error(case, ranks) > 1e6, case


# Terms behind one entry of the loss or a gradient, summed along the chain (tests/tolerance.py):
# a batch of B samples x 24 tokens, widths up to 4 x 32 in the MLP, the B x 2B logits of the
# loss; rounded up to 10^4 (the tiny model has one block per tower).
TERMS = 10_000
# sum|terms| next to the result: the contrastive gradient is a difference of two softmax
# expectations, so terms can cancel; allow them to be 10^3 times the result's scale.
CANCEL = 1_000


def _worst_error(case: str, ranks: list[dict]) -> float:
    """The largest difference from the one-process loss and gradients, in tolerances.

    In float64 the bound is 1e4 * 2.2e-16 * 1e3 = 2.2e-9 of the scale: far above any
    machine's rounding (~1e-15), and 10^8 below what a missing rank takes away.
    """
    ref_loss, ref_grads = _step(case, World(), plain=True)
    worst = 0.0
    for got_loss, got_grads in (r[case] for r in ranks):
        tol = reorder_bound(TERMS, CANCEL * (1 + abs(ref_loss)), torch.float64)
        worst = max(worst, abs(got_loss - ref_loss) / tol)
        for name, g in ref_grads.items():
            tol = reorder_bound(TERMS, CANCEL * (1 + float(g.abs().max())), torch.float64)
            worst = max(worst, float((got_grads[name] - g).abs().max()) / tol)
    return worst


def _assert_equal_to_one_process(ranks: list[dict]) -> None:
    for case in CASES:
        assert _worst_error(case, ranks) <= 1.0, case
    # The cases differ: hard negatives and the sigmoid loss change the numbers.
    assert ranks[0]["clip"][0] != pytest.approx(ranks[0]["clip-hard"][0], abs=1e-3)


def test_resume_in_parallel_is_bit_identical(many):
    whole, resumed = run_weights(many / "whole"), run_weights(many / "crashed")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert run_metrics(many / "whole") == run_metrics(many / "crashed")
    assert [r["step"] for r in run_metrics(many / "whole") if "loss" in r] == [1, 2, 3, 4]


def test_parallel_run_equals_one_process_run(many, tmp_path):
    one = train(replace(RUN, out=str(tmp_path / "one")))
    a, b = run_metrics(one), run_metrics(many / "whole")
    weight_tol = 0.0
    for ra, rb in zip(a, b, strict=True):
        if "loss" in ra:
            # The loss is a forward pass: the same rounding bound as one step's loss.
            tol = reorder_bound(TERMS, CANCEL * (1 + ra["loss"]), torch.float64)
            assert rb["loss"] == pytest.approx(ra["loss"], rel=0, abs=tol), ra["step"]
            assert rb["samples"] == ra["samples"]
            # AdamW turns a gradient difference dg into an update difference of at most
            # lr * dg / eps (the eps of its denominator), and max|g| <= the gradient's norm.
            dg = reorder_bound(TERMS, CANCEL * (1 + ra["grad_norm"]), torch.float64)
            weight_tol += ra["lr"] * dg / RUN.eps
    wa, wb = run_weights(one), run_weights(many / "whole")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=weight_tol, rtol=0, msg=k)


def test_torchrun_cli_siglip_chunked(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "-m", "clipforge.train",
        "--model-args", MICRO_ARGS_CLI, "--loss", "siglip", "--siglip-chunked", "true",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--log-every", "1",
        "--eval-every", "0", "--eval-per-class", "1", "--eval-pairs", "20",
        "--threads", "1", "--progress", "false", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run folder:") == 1  # rank 0 reports, rank 1 is quiet
    rows = run_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert rows[-1]["final"] and (out / "checkpoints" / "final.pt").is_file()
    assert "logit_bias" in rows[0]


def test_bad_distributed_setups_are_one_line_errors(tmp_path):
    with pytest.raises(ClipforgeError, match="--siglip-chunked needs --loss siglip"):
        train(replace(RUN, siglip_chunked=True, out=str(tmp_path / "a")))
    with pytest.raises(ClipforgeError, match="unknown dist backend"):
        train(replace(RUN, dist_backend="mpi", out=str(tmp_path / "b")))


def test_resume_needs_the_same_number_of_processes():
    state = {"position": 24, "positions": [12, 12]}
    assert distributed.saved_positions(state, World(rank=1, size=2), "run") == [12, 12]
    assert distributed.saved_positions({"position": 7}, World(), "run") == [7]
    with pytest.raises(ClipforgeError, match="trained by 2 process"):
        distributed.saved_positions(state, World(), "run")
    with pytest.raises(ClipforgeError, match="divisible"):
        distributed.check_batch(World(rank=0, size=4), 8, 4)
