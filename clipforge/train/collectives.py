"""Collectives that gradients flow through: gathering rows of any count, passing round a ring.

Ranks hold different numbers of texts (several captions per image, hard negatives), so
the gather first exchanges row counts, pads every block to the largest and drops the
padding after. The backward of a gather sums, over all ranks, the gradients that reach
a rank's rows; it is an all-reduce of the padded gradient blocks, which every backend
(gloo included) has, at twice the traffic of a reduce-scatter: the tensors are ``B x D``
embeddings, small next to DDP's gradient traffic.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd import Function

from clipforge.losses import Features
from clipforge.losses.base import NEGATIVE_OF
from clipforge.train.distributed import World


def row_counts(counts: list[int], world: World) -> torch.Tensor:
    """``[N, k]``: the ``k`` counts of every rank (one small all-gather)."""
    mine = torch.tensor(counts, dtype=torch.long, device=world.device)
    if not world.parallel:
        return mine[None]
    out = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(out, mine)
    return torch.stack(out).cpu()


def _pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad])


class _GatherRows(Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        most = max(sizes)
        blocks = [x.new_empty((most, *x.shape[1:])) for _ in sizes]
        dist.all_gather(blocks, _pad(x, most))
        return torch.cat([b[:n] for b, n in zip(blocks, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        sizes, most = ctx.sizes, max(ctx.sizes)
        blocks = torch.stack([_pad(g, most) for g in grad.split(list(sizes))])
        dist.all_reduce(blocks)  # every rank's loss contributes to every rank's rows
        return blocks[ctx.rank, : sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, sizes: list[int], world: World) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order; ``sizes[r]`` rows from rank ``r``.

    Differentiable: the gradient of rank ``r``'s block, summed over all ranks, flows back
    to rank ``r``'s ``x``. Integer tensors (owner maps) pass through without a gradient.
    """
    if not world.parallel:
        return x
    return _GatherRows.apply(x, tuple(int(n) for n in sizes), world.rank)


def gather_features(f: Features, world: World, local: bool = False) -> Features:
    """This rank's :class:`Features` -> the whole batch's, the same on every rank.

    ``owner`` and ``extra[NEGATIVE_OF]`` are offset to global image rows (``-1`` stays);
    ``extra`` keys starting with ``text_`` are gathered by text counts, the others by
    image counts. With ``local``, ``rows`` marks this rank's image rows so the objective
    computes only its share.
    """
    if not world.parallel:
        return f.replace(rows=slice(0, f.batch_size) if local else None)
    b, t = f.image.shape[0], f.text.shape[0]
    counts = row_counts([b, t, int(f.owner is not None)], world)
    bs, ts = counts[:, 0].tolist(), counts[:, 1].tolist()
    start = sum(bs[: world.rank])
    owner = None
    if bool(counts[:, 2].any()):
        own = f.owners()
        owner = gather_rows(torch.where(own >= 0, own + start, own), ts, world)
    extra = dict(f.extra)
    if NEGATIVE_OF in extra:
        of = extra[NEGATIVE_OF]
        extra[NEGATIVE_OF] = torch.where(of >= 0, of + start, of)
    return Features(
        image=gather_rows(f.image, bs, world),
        text=gather_rows(f.text, ts, world),
        scale=f.scale,
        bias=f.bias,
        owner=owner,
        weights=None if f.weights is None else gather_rows(f.weights, bs, world),
        extra={
            k: gather_rows(v, ts if k.startswith("text_") else bs, world) for k, v in extra.items()
        },
        rows=slice(start, start + b) if local else None,
    )


class _RingPass(Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, recv_rows: int, world: World) -> torch.Tensor:
        ctx.send_shape, ctx.world = x.shape, world
        out = x.new_empty((recv_rows, *x.shape[1:]))
        _exchange(x, out, to=world.rank + 1, frm=world.rank - 1, world=world)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # The gradient of what we received belongs to the rank we received it from.
        world = ctx.world
        back = grad.new_empty(ctx.send_shape)
        _exchange(grad, back, to=world.rank - 1, frm=world.rank + 1, world=world)
        return back, None, None


def _exchange(send: torch.Tensor, recv: torch.Tensor, to: int, frm: int, world: World) -> None:
    ops = [
        dist.P2POp(dist.isend, send.contiguous(), to % world.size),
        dist.P2POp(dist.irecv, recv, frm % world.size),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()


def ring_pass(x: torch.Tensor, recv_rows: int, world: World) -> torch.Tensor:
    """Send ``x`` to rank ``r + 1`` and return the ``recv_rows`` rows sent by rank ``r - 1``.

    Differentiable: the backward sends the received rows' gradient back to ``r - 1`` and
    returns the gradient that ``r + 1`` computed for ``x``.
    """
    if not world.parallel:
        return x
    return _RingPass.apply(x, recv_rows, world)


__all__ = ["gather_features", "gather_rows", "ring_pass", "row_counts"]
