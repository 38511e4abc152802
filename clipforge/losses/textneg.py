"""Hard-negative captions against their own image, under a margin (NegCLIP, structure-aware
contrast).

With ``--hard-negatives attribute,relation`` every shapes-world sample brings its caption
minimally changed: two colours exchanged, the relation flipped. The plain ``clip`` loss
adds those captions as extra columns of *every* image's softmax, where, for all but the
image they were made from, they are easy negatives. This term asks the one question the
negative was made for: does the image score its own caption above its own perturbed
caption, by a margin ``m`` (cosine units)? For image ``i`` with caption ``p`` and own
negatives ``N(i)``::

    l_i = log(1 + sum_{n in N(i)} exp(s (c_in - c_ip + m)))

with ``c`` the cosine similarity and ``s`` the model's temperature, read but not trained
by this term (the contrastive term owns it). It is the cross-entropy of the positive
against its own negatives with the positive's logit lowered by ``s m``: the loss keeps
pushing until the positive wins by about ``m``, where a margin-free softmax would already
be content with a tie broken by noise. The loss is the mean of ``l_i`` over the images
that have a negative (weighted by the per-sample weights); a batch without any is zero.

Use it beside a contrastive loss: ``--loss clip+textneg --hard-negatives attribute,relation``.
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


def textneg_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    positive: torch.Tensor,
    negative_of: torch.Tensor,
    margin: float = 0.1,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The margin loss of each image's own hard negatives (see the module docstring).

    ``image`` ``[B, D]`` and ``text`` ``[T, D]`` are L2-normalised; ``positive`` ``[B]``
    is the text row of each image's caption; ``negative_of`` ``[T]`` the image row a
    hard-negative caption was made from, ``-1`` for every other text. ``weights``
    ``[B]`` weight the images' terms.
    """
    b = image.shape[0]
    neg = (negative_of >= 0).nonzero().flatten()
    if neg.numel() == 0:
        # No negative in this batch: a zero that still belongs to the graph.
        return image.sum() * 0
    src = negative_of[neg].long()
    c_pos = (image * text[positive]).sum(dim=1)  # [B]
    c_neg = (image[src] * text[neg]).sum(dim=1)  # [K]
    z = scale * (c_neg - c_pos[src] + margin)
    # log(1 + sum exp z) per image, shifted by max(0, max z) so no exponential overflows;
    # the 1 is the positive's own term, exp(0).
    top = torch.zeros(b, dtype=z.dtype, device=z.device)
    top = top.scatter_reduce(0, src, z.detach(), "amax", include_self=True)
    sums = torch.zeros(b, dtype=z.dtype, device=z.device).index_add(0, src, (z - top[src]).exp())
    per_image = top + torch.log(torch.exp(-top) + sums)
    has = torch.zeros(b, dtype=torch.bool, device=z.device)
    has[src] = True
    if weights is None:
        return per_image[has].mean()
    w = weights[has]
    return (per_image[has] * w).sum() / w.sum()


class TextNegObjective(OwnNegativesObjective):
    """:func:`textneg_loss` on a batch's hard-negative captions."""

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__(margin)

    def own_negatives(self, f: Features, negative_of: torch.Tensor) -> torch.Tensor:
        return textneg_loss(
            f.image, f.text, f.scale.detach(), first_positive(f), negative_of,
            self.margin, f.weights,
        )  # fmt: skip


@dataclass
class TextNegOptions:
    textneg_margin: float = option(
        0.1,
        "textneg: cosine margin by which an image's caption must beat its own hard negatives",
        check=COSINE_MARGIN,
    )


def _build(o: TextNegOptions, run: Any) -> Objective:
    require_hard_negatives(
        run, "textneg", "contrasts hard-negative captions with their own image",
        "attribute,relation",
    )  # fmt: skip
    return TextNegObjective(o.textneg_margin)


register(
    "textneg",
    LossSpec(
        _build,
        summary="each image's own hard-negative captions under a cosine margin "
        "(add to a loss: clip+textneg --hard-negatives attribute,relation)",
        contrastive=False,
        options=TextNegOptions,
    ),
)
