"""CLIP's symmetric InfoNCE (Radford et al., 2021), with several positives and hard negatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.losses.base import Features, Objective, weighted_mean
from clipforge.losses.registry import LossSpec, register


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
    hard_weight: float = 1.0,
    rows: slice | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the ``B x T`` similarity matrix.

    With one caption per image (``owner=None``, ``T = B``)::

        L = 1/2 [ CE(s * I T^T, diag) + CE(s * T I^T, diag) ]

    with ``s = exp(t)`` the learnable inverse temperature. ``image`` ``[B, D]`` and
    ``text`` ``[T, D]`` are L2-normalised.

    ``owner[j]`` names the image of text ``j``; ``-1`` marks a hard-negative caption, an
    extra column of every image's softmax that has no row of its own (NegCLIP, CLIP-IN).
    An image with several captions averages ``-log softmax`` over its positives, each
    against all columns; every positive text is one row of the text-to-image term.
    ``hard_weight`` multiplies ``exp`` of the hard-negative columns (adds ``log w`` to
    their logits), the knob for how hard they pull. ``weights`` ``[B]`` weight each
    image's terms and those of its captions (normalised to mean 1).

    ``rows`` selects the image rows whose terms to compute: their image-to-text rows and
    the text-to-image rows of their captions, each divided by the normaliser of the whole
    batch, so the shares of disjoint ``rows`` covering the batch add up to the loss.
    """
    if rows is not None:
        return _clip_share(image, text, scale, bias, weights, owner, hard_weight, rows)
    logits = scale * image @ text.T
    if bias is not None:
        logits = logits + bias
    b = image.shape[0]
    if owner is None:
        target = torch.arange(b, device=image.device)
        li = F.cross_entropy(logits, target, reduction="none")
        lt = F.cross_entropy(logits.T, target, reduction="none")
        return (weighted_mean(li, weights) + weighted_mean(lt, weights)) / 2
    negative = owner < 0
    if hard_weight != 1.0 and bool(negative.any()):
        logits = logits + negative.to(logits.dtype) * math.log(hard_weight)
    pos = owner[None, :] == torch.arange(b, device=image.device)[:, None]
    logp = logits.log_softmax(dim=1)
    n_pos = pos.sum(dim=1)
    if bool((n_pos == 0).any()):
        raise ValueError("every image needs at least one positive caption")
    li = -(logp * pos).sum(dim=1) / n_pos
    keep = ~negative
    lt = F.cross_entropy(logits[:, keep].T, owner[keep], reduction="none")
    wt = None if weights is None else weights[owner[keep]]
    return (weighted_mean(li, weights) + weighted_mean(lt, wt)) / 2


def _clip_share(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    owner: torch.Tensor | None,
    hard_weight: float,
    rows: slice,
) -> torch.Tensor:
    """:func:`clip_loss` restricted to the terms of image ``rows`` and their captions.

    Only ``[b, T]`` and ``[t, B]`` logits are formed (``b`` rows, ``t`` of their captions)
    instead of ``[B, T]``: the memory saving of ``--local-loss``.
    """
    b = image.shape[0]
    start, stop, _ = rows.indices(b)
    if owner is None:
        if text.shape[0] != b:
            raise ValueError(f"{b} images but {text.shape[0]} texts and no owner map")
        owner = torch.arange(b, device=image.device)
    negative = owner < 0
    logits = scale * image[start:stop] @ text.T
    if bias is not None:
        logits = logits + bias
    if hard_weight != 1.0 and bool(negative.any()):
        logits = logits + negative.to(logits.dtype) * math.log(hard_weight)
    own = torch.arange(start, stop, device=image.device)
    pos = owner[None, :] == own[:, None]
    n_pos = pos.sum(dim=1)
    if bool((n_pos == 0).any()):
        raise ValueError("every image needs at least one positive caption")
    li = -(logits.log_softmax(dim=1) * pos).sum(dim=1) / n_pos
    mine = (owner >= start) & (owner < stop)
    # Text rows need every image as a column, so they get logits of their own.
    t_logits = scale * text[mine] @ image.T
    if bias is not None:
        t_logits = t_logits + bias
    lt = F.cross_entropy(t_logits, owner[mine], reduction="none")
    captions = owner[~negative]
    if weights is None:
        share_i = li.sum() / b
        share_t = lt.sum() / captions.numel()
    else:
        share_i = (li * weights[start:stop]).sum() / weights.sum()
        share_t = (lt * weights[owner[mine]]).sum() / weights[captions].sum()
    return (share_i + share_t) / 2


class ClipObjective(Objective):
    """:func:`clip_loss` as an objective."""

    computes_shares = True

    def __init__(self, hard_weight: float = 1.0) -> None:
        super().__init__()
        self.hard_weight = hard_weight

    def forward(self, f: Features) -> torch.Tensor:
        return clip_loss(
            f.image,
            f.text,
            f.scale,
            f.bias,
            f.weights,
            f.owner,
            hard_weight=self.hard_weight,
            rows=f.rows,
        )


register(
    "clip",
    LossSpec(
        lambda _, run: ClipObjective(getattr(run, "hard_negative_weight", 1.0)),
        summary="symmetric InfoNCE (CLIP)",
    ),
)
