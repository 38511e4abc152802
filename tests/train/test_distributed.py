"""Two gloo processes compute the loss and gradients of one process on the whole batch."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.data.pipeline import Batch
from clipforge.errors import ClipforgeError
from clipforge.losses import get_loss
from clipforge.models import CLIP, get_model_config
from clipforge.train import TrainConfig, distributed
from clipforge.train.distributed import World
from clipforge.train.trainer import batch_loss
from tests.conftest import MICRO_ARGS

B = 8
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
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank: int, size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1",
    )  # fmt: skip
    torch.set_num_threads(1)


def _batch(hard: bool) -> Batch:
    """A global batch; with ``hard``: two captions for rows 1 and 6, three hard negatives
    (two from rank 0's rows, one from rank 1's: the ranks hold 7 and 6 texts) and weights."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 16, 16, generator=g)
    if not hard:
        tokens = torch.randint(1, 400, (B, 24), generator=g)
        return Batch(images, tokens, torch.ones(B), [""] * B, B)
    owner = [0, 1, 1, 2, 3, 4, 5, 6, 6, 7, -1, -1, -1]
    text_row = [0, 1, 1, 2, 3, 4, 5, 6, 6, 7, 0, 3, 5]
    tokens = torch.randint(1, 400, (len(owner), 24), generator=g)
    weights = torch.rand(B, generator=g) + 0.5
    return Batch(
        images, tokens, weights, [""] * len(owner), B, {},
        torch.tensor(owner), torch.tensor(text_row),
    )  # fmt: skip


def _step(case: str, world: World) -> tuple[float, dict[str, torch.Tensor]]:
    loss_name, hard, local, chunked = CASES[case]
    spec = get_loss(loss_name)
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", MICRO_ARGS), spec.init_logit_scale, spec.init_logit_bias)
    objective = spec.build(TrainConfig(hard_negative_weight=2.0))
    ddp = distributed.wrap_model(model, world)
    part = _batch(hard).rows(distributed.share(world, B, 0))
    loss, logged = batch_loss(ddp, objective, part, world, local, chunked)
    loss.backward()
    return float(logged), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    dist_env(rank, 2, port)
    world = distributed.setup("gloo")
    try:
        torch.save({c: _step(c, world) for c in CASES}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown(world)


def test_two_processes_equal_one(tmp_path):
    mp.start_processes(_worker, (free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in CASES:
        ref_loss, ref_grads = _step(case, World())
        for got_loss, got_grads in (r[case] for r in ranks):
            assert got_loss == pytest.approx(ref_loss, abs=1e-6), case
            for name, g in ref_grads.items():
                # 1e-6 of the gradient's scale: the sums run in another order (gather,
                # DDP's average), and the largest entries here are ~10 (a few float32 ulps).
                tol = 1e-6 * (1 + float(g.abs().max()))
                torch.testing.assert_close(got_grads[name], g, atol=tol, rtol=0, msg=case)
    # The cases differ: hard negatives and the sigmoid loss change the numbers.
    assert ranks[0]["clip"][0] != pytest.approx(ranks[0]["clip-hard"][0], abs=1e-3)


def test_shares_split_each_micro_batch():
    w = World(rank=1, size=2)
    assert distributed.share(w, 8, 0) == slice(4, 8)
    assert distributed.share(w, 4, 1) == slice(6, 8)
    with pytest.raises(ClipforgeError, match="divisible"):
        distributed.check_batch(World(rank=0, size=4), 8, 4)
