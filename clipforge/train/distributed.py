"""Data parallelism under ``torchrun``: this process's place in the world, and its rules.

``torchrun --nproc_per_node N -m clipforge.train ...`` starts ``N`` processes that each run
:func:`clipforge.train.train`; :func:`setup` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process
group: gloo on CPU, NCCL on ``cuda:LOCAL_RANK`` when CUDA is available. The model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the
gradients of the ranks.

The batch. ``--batch-size`` is the global batch: each of the ``N`` ranks reads its own
``B/N`` samples from the data stream's rank split (``iter_batches(rank=r,
world_size=N)``: rank ``r``'s position ``p`` is the global sample ``p * N + r``, seeded
as that sample). Without skipped samples the ranks' batches together hold exactly the
1-process batch, with each sample augmented the same way, and each micro-batch of a
step with ``--accum-steps`` is the 1-process micro-batch. Two differences remain: a
rank drops only the hard-negative captions that repeat its own captions (not another
rank's), and ranks skip bad samples independently. Each rank's stream position goes into
the checkpoint, so a run resumes with the number of processes it was started with.

The loss and its gradient. Embeddings are all-gathered with gradient
(:mod:`clipforge.train.collectives`); the backward of the gather *sums* the gradients
that all ranks send to a rank's rows. DDP then *averages* parameter gradients over the
``N`` ranks. Two ways to get exactly the 1-process gradient of the loss ``L``:

* full loss (default): every rank computes the whole ``L``. Rank ``r``'s embeddings get
  ``N * dL/df_r`` (``N`` identical losses), DDP's average divides by ``N``: exact. The
  temperature and bias enter ``L`` directly on every rank, ``dL/ds`` each, averaged: exact.
* ``--local-loss``: rank ``r`` computes its share ``S_r`` (its rows' terms over the
  whole batch's normalisers, ``sum_r S_r = L``) and back-propagates ``N * S_r``. Its rows
  get ``sum_q N dS_q/df_r = N dL/df_r``, and the temperature ``(1/N) sum_r N dS_r/ds =
  dL/ds`` after averaging: exact again, at ``O(B/N x B)`` logits per rank instead of
  ``O(B x B)``. The logged loss is the all-reduced sum of the shares.

SigLIP's chunked exchange (``--siglip-chunked``, :mod:`clipforge.train.siglip_ring`)
computes the same shares without gathering: text chunks travel round the ring.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from clipforge.errors import ClipforgeError

BACKENDS = ("auto", "gloo", "nccl")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes, and the device it computes on.

    The default is the single process: no process group, CPU.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # setup() created the process group, teardown() destroys it

    @property
    def is_main(self) -> bool:
        """The rank that writes the run folder and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Whether torchrun (or another launcher using its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _alone() -> World:
    """A lone process: on the GPU where there is one, so one GPU needs no launcher."""
    return World(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def setup(backend: str = "auto") -> World:
    """Join the process group described by torchrun's environment; a lone process stays alone."""
    if backend not in BACKENDS:
        raise ClipforgeError(f"unknown dist backend {backend!r} (known: {', '.join(BACKENDS)})")
    if not launched():
        return _alone()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if size == 1:
        return _alone()
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ClipforgeError("dist backend nccl needs CUDA; use --dist-backend gloo on CPU")
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, rank=rank, world_size=size)
    return World(rank, size, local_rank, backend, device, owns)


def teardown(world: World) -> None:
    """Leave the process group that :func:`setup` joined (a no-op for a borrowed one)."""
    if world.owns_group and dist.is_initialized():
        # A run that raised leaves its sharded model in reference cycles (through the
        # exception's frames) that only the cyclic collector frees. Freed later, during
        # interpreter shutdown, gloo work it may still hold takes the GIL from a dying
        # interpreter and aborts the process; freed here, the group is still alive.
        gc.collect()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every rank (rank 0 writing the run folder, say)."""
    if world.parallel:
        dist.barrier()


def check_batch(world: World, batch_size: int, accum_steps: int) -> None:
    """Every micro-batch must split into equal, non-empty rank shares."""
    if batch_size % (accum_steps * world.size):
        raise ClipforgeError(
            f"batch size {batch_size} is not divisible by accum steps {accum_steps} x "
            f"{world.size} processes (--batch-size is the global batch)"
        )


def stream_state(
    next_position: int, skipped: dict[str, int], world: World
) -> tuple[list[int], dict[str, int]]:
    """Every rank's stream position and the skip counts of all ranks, summed by reason."""
    if not world.parallel:
        return [next_position], dict(skipped)
    states: list[tuple[int, dict[str, int]]] = [(0, {})] * world.size
    dist.all_gather_object(states, (next_position, skipped))
    total: dict[str, int] = {}
    for _, counts in states:
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + n
    return [p for p, _ in states], total


def saved_positions(state: dict, world: World, run_dir: object) -> list[int]:
    """The per-rank stream positions of a checkpoint, which fix the number of processes."""
    positions = [int(p) for p in state.get("positions", [state["position"]])]
    if len(positions) != world.size:
        raise ClipforgeError(
            f"{run_dir} was trained by {len(positions)} process(es); resume it with as many "
            f"(torchrun --nproc_per_node {len(positions)}), not {world.size}"
        )
    return positions


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over ranks of a detached tensor (the same on every rank afterwards)."""
    value = value.detach().clone()
    if world.parallel:
        dist.all_reduce(value)
    return value


def wrap_model(model: nn.Module, world: World) -> nn.Module:
    """``model`` on this rank's device, inside DDP when there are several ranks.

    Batch norms are made global (:mod:`clipforge.train.batchnorm`) so the ranks together
    compute the 1-process model.
    """
    from clipforge.train.batchnorm import globalise_batch_norms  # it builds on this module

    model.to(world.device)
    if not world.parallel:
        return model
    globalise_batch_norms(model, world)
    ids = [world.device.index] if world.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if world.size > 2 and world.backend == "gloo":
        ddp.register_comm_hook(None, _ordered_average)
    return ddp


def _ordered_average(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's gradient average with the ranks' values always summed in rank order.

    Unannotated: DDP checks a hook's annotations as objects, which postponed evaluation
    (``from __future__ import annotations``) turns into strings.

    DDP regroups its gradient buckets after the first step, which moves each gradient to
    another offset of the all-reduce and so, with 3 or more ranks, changes the order in
    which their values are added. A run resumed from a checkpoint starts with the first
    step's grouping again and would drift from an uninterrupted run in the last bits. An
    all-gather followed by a sum in rank order does not depend on the grouping; it moves
    ``N/2`` times the data of an all-reduce, which the CPU runs gloo serves can afford.
    (With 2 ranks the order does not matter: float addition is commutative.)
    """
    buf = bucket.buffer()
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    fut = dist.all_gather(parts, buf, async_op=True).get_future()

    def finish(_: torch.futures.Future) -> torch.Tensor:
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        return total.div_(len(parts))

    return fut.then(finish)


def no_sync(model: nn.Module) -> AbstractContextManager:
    """Skip DDP's gradient average in this backward (every micro-batch but a step's last)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def broadcast(obj: T, world: World) -> T:
    """Rank 0's ``obj`` (a small picklable value) on every rank."""
    if not world.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params: Iterable[nn.Parameter], world: World) -> None:
    """Average gradients DDP does not see (parameters of an objective) over the ranks."""
    if not world.parallel:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world.size


__all__ = [
    "BACKENDS",
    "World",
    "all_sum",
    "average_gradients",
    "barrier",
    "broadcast",
    "check_batch",
    "launched",
    "no_sync",
    "saved_positions",
    "setup",
    "stream_state",
    "teardown",
    "wrap_model",
]
