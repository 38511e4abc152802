"""SigLIP's chunked exchange: the sigmoid loss without gathering the texts.

The sigmoid loss has no softmax over a row, so an image row's loss is a sum over text
columns that can be taken chunk by chunk (Zhai et al., 2023, section 3.3). Rank ``r``
scores its ``b`` images against its own texts, then passes the text chunk it holds to
rank ``r + 1`` and receives rank ``r - 1``'s, ``N - 1`` times, until its images have
met every text. The backward runs the ring the other way (:func:`ring_pass`), so each
chunk's gradient, accumulated over the ranks it visited, comes home to its owner.

Each rank computes its rows' share of the loss (see :mod:`clipforge.train.distributed`
for the ``N`` the trainer multiplies it by). Several captions per image and hard
negatives are supported: the (small, gradient-free) owner map is gathered up front.

Memory: per rank the ``b x T`` logits of the share (``B^2 / N``, as with
``--local-loss``), but no gathered ``T x D`` text matrix is built at once and no
all-gather/all-reduce of texts happens; each hop moves one ``T/N x D`` chunk between
neighbours.
"""

from __future__ import annotations

import torch

from clipforge.losses import Features
from clipforge.losses.siglip import siglip_terms
from clipforge.train.collectives import gather_rows, ring_pass, row_counts
from clipforge.train.distributed import World


def siglip_ring_share(f: Features, world: World) -> torch.Tensor:
    """This rank's share of :func:`~clipforge.losses.siglip_loss` over the whole batch.

    ``f`` holds this rank's rows only (not gathered). The shares of all ranks add up to
    the loss of the concatenated batch.
    """
    if f.bias is None:
        raise ValueError("siglip_loss needs a logit bias; build the model with one")
    counts = row_counts([f.image.shape[0], f.text.shape[0]], world)
    bs, ts = counts[:, 0].tolist(), counts[:, 1].tolist()
    start = sum(bs[: world.rank])
    own = f.owners()
    owners = gather_rows(torch.where(own >= 0, own + start, own), ts, world).split(ts)
    rows = torch.arange(start, start + f.batch_size, device=f.image.device)
    chunk, src = f.text, world.rank
    per_row = f.image.new_zeros(f.batch_size)
    for hop in range(world.size):
        positive = owners[src][None, :] == rows[:, None]
        per_row = per_row + siglip_terms(f.image, chunk, f.scale, f.bias, positive)
        if hop + 1 < world.size:
            src = (src - 1) % world.size  # we now receive the chunk the previous rank held
            chunk = ring_pass(chunk, ts[src], world)
    if f.weights is None:
        return per_row.sum() / sum(bs)
    total = gather_rows(f.weights.detach(), bs, world).sum()
    return (per_row * f.weights).sum() / total


__all__ = ["siglip_ring_share"]
