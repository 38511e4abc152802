"""Text-side separation: a caption pushed away from its own hard negatives in the text
tower alone.

``experiments/binding_probe.py`` finds that the default model's text tower maps "a red
square and a blue circle" and "a blue square and a red circle" to almost the same
embedding (1 - cos 0.004, against 0.71 between unrelated captions), and a linear probe
reads the binding from it at chance, while the image embedding holds some (64%). A
hard-negative column (``clip``'s extra columns, ``textneg``) can only separate the two
captions along a direction the image embedding supplies, and an image embedding that
barely binds supplies almost none: neither tower can start. This term needs no image.
For a caption ``p`` and each hard negative ``n`` made from its sample::

    l = relu(cos(t_p, t_n) - r_p + m)

averaged over the negatives in the batch, where ``r_p`` is the mean cosine of ``p`` to the
other captions of its image in the batch (``--caption all``: "a blue circle and a red
square" for "a red square and a blue circle") and 1 where there are none. Only text
embeddings enter it, so the text tower must write into ``t_p`` something that tells ``p``
from ``n``. For a colour swap the bag of words is the same; with paraphrases as the
reference, a word-order feature ("the first colour is red") does not pass either, which
leaves which colour goes with which shape. Without them (one caption per image) the
term is ``relu(cos - (1 - m))``: the text tower may separate the swap in any way, and a
linear probe finds that it does so unsystematically. The image tower then has a direction
to align to. ``m`` (cosine units, default 0.3) is the margin: unrelated captions sit near cosine
0.3, paraphrases near 0.9.

Use it beside a contrastive loss: ``--loss clip+textsep --hard-negatives attribute
--caption all --max-captions 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipforge.config import option
from clipforge.losses.base import (
    COSINE_MARGIN,
    Features,
    Objective,
    OwnNegativesObjective,
    first_positive,
    require_hard_negatives,
)
from clipforge.losses.registry import LossSpec, register


def textsep_loss(
    text: torch.Tensor,
    positive: torch.Tensor,
    negative_of: torch.Tensor,
    margin: float = 0.3,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``relu(cos(t_p, t_n) - r_p + margin)`` over the hard-negative captions ``n``.

    ``text`` ``[T, D]`` is L2-normalised; ``positive`` ``[B]`` is the text row of each
    image's caption ``p``; ``negative_of`` ``[T]`` the image row a hard-negative caption
    was made from, ``-1`` for every other text. ``r_p`` is the mean cosine of ``p`` to the
    image's other captions in ``owner`` (``[T]``, the image row of each text; its
    paraphrases under ``--caption all``), or 1 (``p`` itself) where it has none.
    ``weights`` ``[B]`` weight each negative by its sample's weight.
    """
    neg = (negative_of >= 0).nonzero().flatten()
    if neg.numel() == 0:
        # No negative in this batch: a zero that still belongs to the graph.
        return text.sum() * 0
    src = negative_of[neg].long()
    anchor = text[positive]  # [B, D]
    ref = torch.ones(positive.shape[0], dtype=text.dtype, device=text.device)
    if owner is not None:
        rows = torch.arange(text.shape[0], device=text.device)
        others = (owner >= 0) & (rows != positive[owner.clamp(min=0)])
        if bool(others.any()):
            j = others.nonzero().flatten()
            i = owner[j].long()
            cos = (anchor[i] * text[j]).sum(dim=1)
            total = torch.zeros_like(ref).index_add(0, i, cos)
            count = torch.zeros_like(ref).index_add(0, i, torch.ones_like(cos))
            ref = torch.where(count > 0, total / count.clamp(min=1), ref)
    cos = (anchor[src] * text[neg]).sum(dim=1)
    per_negative = torch.relu(cos - ref[src] + margin)
    if weights is None:
        return per_negative.mean()
    w = weights[src]
    return (per_negative * w).sum() / w.sum()


class TextSepObjective(OwnNegativesObjective):
    """:func:`textsep_loss` on a batch's hard-negative captions."""

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__(margin)

    def own_negatives(self, f: Features, negative_of: torch.Tensor) -> torch.Tensor:
        return textsep_loss(f.text, first_positive(f), negative_of, self.margin, f.weights, f.owner)


@dataclass
class TextSepOptions:
    textsep_margin: float = option(
        0.3,
        "textsep: margin (cosine) by which a caption's own hard negatives must lie "
        "farther from it than its paraphrases (itself, with one caption per image)",
        check=COSINE_MARGIN,
    )


def _build(o: TextSepOptions, run: Any) -> Objective:
    require_hard_negatives(
        run, "textsep", "separates captions from their own hard negatives", "attribute"
    )
    return TextSepObjective(o.textsep_margin)


register(
    "textsep",
    LossSpec(
        _build,
        summary="each caption pushed from its own hard negatives in the text tower "
        "(add to a loss: clip+textsep --hard-negatives attribute)",
        contrastive=False,
        options=TextSepOptions,
    ),
)
