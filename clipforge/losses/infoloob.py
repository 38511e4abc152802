"""InfoLOOB and CLOOB (Fürst et al., 2022, "CLOOB: Modern Hopfield Networks with InfoLOOB
Outperform CLIP")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.config import option
from clipforge.losses.base import Features, Objective, reject_hard_negatives, weighted_mean
from clipforge.losses.registry import LossSpec, register
from clipforge.ranges import non_negative


def infoloob_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """The leave-one-out bound: InfoNCE with the positive removed from the denominator.

    With one caption per image (``owner=None``)::

        L = 1/2 [ 1/B sum_i ( log sum_{j != i} e^{s x_i.y_j} - s x_i.y_i )
                + 1/B sum_i ( log sum_{j != i} e^{s x_j.y_i} - s x_i.y_i ) ]

    Unlike InfoNCE the loss does not saturate once the positive dominates its row (the
    positive's own term no longer sits in the denominator), which is why CLOOB pairs it
    with Hopfield retrievals that make positives and negatives more alike. The bound is
    unbounded below in ``s``, so the objective keeps the temperature fixed.

    ``owner`` (see :class:`Features`): an image leaves all its positives out of its
    denominator and averages the term over them; hard-negative columns (``-1``) are extra
    negatives of every image and have no text-to-image row. ``weights`` ``[B]`` weight
    each image's terms and those of its captions.
    """
    logits = scale * image @ text.T
    b, t = logits.shape
    if owner is None:
        owner = torch.arange(b, device=image.device)
        if t != b:
            raise ValueError(f"{b} images but {t} texts and no owner map")
    pos = owner[None, :] == torch.arange(b, device=image.device)[:, None]
    n_pos = pos.sum(dim=1)
    if bool((n_pos == 0).any()):
        raise ValueError("every image needs at least one positive caption")
    negatives_only = logits.masked_fill(pos, float("-inf"))
    li = torch.logsumexp(negatives_only, dim=1) - (logits * pos).sum(dim=1) / n_pos
    keep = owner >= 0
    cols = torch.arange(t, device=image.device)[keep]
    rows = owner[keep]
    lt = torch.logsumexp(negatives_only[:, keep], dim=0) - logits[rows, cols]
    wt = None if weights is None else weights[rows]
    return (weighted_mean(li, weights) + weighted_mean(lt, wt)) / 2


def hopfield_retrieve(queries: torch.Tensor, patterns: torch.Tensor, beta: float) -> torch.Tensor:
    """One update of a modern Hopfield network: ``normalize(softmax(beta q P^T) P)``.

    Each query is replaced by an attention-weighted average of the stored patterns; a
    large ``beta`` retrieves the nearest pattern, a small one an average of many, which
    carries the co-occurrence structure of the batch into every retrieval.
    """
    return F.normalize(torch.softmax(beta * queries @ patterns.T, dim=-1) @ patterns, dim=-1)


def cloob_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLOOB: InfoLOOB on embeddings retrieved from the batch by a modern Hopfield network.

    With ``U`` the batch's image embeddings and ``V`` its (positive) text embeddings as
    stored patterns, ``U_x = retrieve(x, U)``, ``U_y = retrieve(y, U)``, ``V_x =
    retrieve(x, V)``, ``V_y = retrieve(y, V)``, and::

        L = 1/2 [ InfoLOOB(U_x, U_y) + InfoLOOB(V_x, V_y) ]

    (the paper sums the two terms; the mean keeps the scale of :func:`infoloob_loss`).
    Both sides of each pair are retrieved from the same store, so a positive pair is
    compared in one modality's coordinates.
    """
    keep = slice(None) if owner is None else owner >= 0
    stored_text = text[keep]
    u_x, u_y = hopfield_retrieve(image, image, beta), hopfield_retrieve(text, image, beta)
    v_x, v_y = (
        hopfield_retrieve(image, stored_text, beta),
        hopfield_retrieve(text, stored_text, beta),
    )
    return (
        infoloob_loss(u_x, u_y, scale, weights, owner)
        + infoloob_loss(v_x, v_y, scale, weights, owner)
    ) / 2


NO_HARD_NEGATIVES = (
    "with --hopfield-beta a retrieved negative is a blend of the batch's images, no longer "
    "a minimal edit of the caption (use infoloob without Hopfield)"
)


class InfoLOOBObjective(Objective):
    """:func:`infoloob_loss`, or :func:`cloob_loss` when ``hopfield_beta`` is set.

    The temperature is not learned (its gradient is cut): the leave-one-out bound keeps
    rewarding a larger scale, which would run it into the model's cap. CLOOB fixes
    ``s = 30``, which the registry entry uses as the initial (and so the only) value.
    """

    def __init__(self, hopfield_beta: float | None = None) -> None:
        super().__init__()
        self.hopfield_beta = hopfield_beta or None

    def forward(self, f: Features) -> torch.Tensor:
        scale = f.scale.detach()
        if self.hopfield_beta is None:
            return infoloob_loss(f.image, f.text, scale, f.weights, f.owner)
        reject_hard_negatives(f, "infoloob", NO_HARD_NEGATIVES)
        return cloob_loss(f.image, f.text, scale, self.hopfield_beta, f.weights, f.owner)


@dataclass
class InfoLOOBOptions:
    hopfield_beta: float | None = option(
        None,
        "infoloob: inverse temperature of CLOOB's Hopfield retrieval (none/0 = off)",
        check=non_negative,
    )


# Objectives that cannot use hard-negative captions refuse them when built, before a run
# starts; their forward passes check again (data may bring its own negatives).
def _build(o: InfoLOOBOptions, run: Any) -> Objective:
    obj = InfoLOOBObjective(o.hopfield_beta)
    if obj.hopfield_beta is not None:
        reject_hard_negatives(run, "infoloob", NO_HARD_NEGATIVES)
    return obj


# CLOOB keeps the inverse temperature fixed at 30 (the objective cuts its gradient).
register(
    "infoloob",
    LossSpec(
        _build,
        math.log(30.0),
        summary="InfoNCE without the positive in the denominator (+ --hopfield-beta: CLOOB)",
        options=InfoLOOBOptions,
    ),
)
