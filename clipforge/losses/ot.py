"""Noisy correspondence by optimal transport (Norton, Lin et al., 2024), for image-caption pairs.

A batch scraped from the web holds pairs whose caption belongs to another image, or to
none. Norton realigns them: an entropic optimal transport between the batch's images and
captions, over their similarities, says which caption each image is best matched to, and
an extra "alignable bucket" row and column, as similar to everything as a typical strong
negative, takes the mass of images and captions that match nothing in the batch. The
plan, not the given diagonal, is the target of the contrastive loss, so a swapped pair
pulls each image towards the caption that fits it and an unmatched pair pulls on
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, reject_hard_negatives
from clipforge.losses.registry import LossSpec, register
from clipforge.ranges import count, positive, probability

ONE_CAPTION = "the transport plan matches one caption to each image"


def sinkhorn(
    cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float, iters: int
) -> torch.Tensor:
    """The entropic transport plan ``P = diag(u) exp(-C / eps) diag(v)`` with row sums ``a``
    and column sums ``b`` (``a.sum() == b.sum()``), by Sinkhorn's alternating scalings.

    The scalings run in the log domain: ``exp(-C / eps)`` of similarities over a small
    ``eps`` overflows float32 long before the plan is any good.
    """
    log_k = -cost / epsilon
    log_a, log_b = a.log(), b.log()
    log_u = torch.zeros_like(log_a)
    log_v = torch.zeros_like(log_b)
    for _ in range(iters):
        log_u = log_a - torch.logsumexp(log_k + log_v[None, :], dim=1)
        log_v = log_b - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return (log_u[:, None] + log_k + log_v[None, :]).exp()


def realigned_targets(
    sim: torch.Tensor,
    epsilon: float = 0.05,
    iters: int = 50,
    bucket_quantile: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan between ``B`` images and ``B`` captions of similarity ``sim`` ``[B, B]``,
    and the share of each image's mass that went to the bucket.

    Every image and every caption has mass 1; the bucket row and column have mass ``B``
    (room for the whole batch) and similarity ``bucket_quantile`` of the off-diagonal
    entries of ``sim`` (the given negatives) to everything, the bucket-bucket cell included. Returns ``P`` ``[B, B]`` (row
    ``i`` sums to ``1 - bucket[i]``) and ``bucket`` ``[B]``.
    """
    n = sim.shape[0]
    # A quantile of the negatives: what an image's true caption should beat. (Of all
    # entries, a small batch's diagonal would lift the bucket above its own pairs.)
    off = sim[~torch.eye(n, dtype=torch.bool, device=sim.device)] if n > 1 else sim.flatten()
    edge = torch.quantile(off, bucket_quantile)
    full = torch.full((n + 1, n + 1), float(edge), dtype=sim.dtype, device=sim.device)
    full[:n, :n] = sim
    mass = torch.ones(n + 1, dtype=sim.dtype, device=sim.device)
    mass[n] = n
    plan = sinkhorn(-full, mass, mass, epsilon, iters)
    return plan[:n, :n], plan[:n, n]


def ot_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    alpha: float = 1.0,
    epsilon: float = 0.05,
    iters: int = 50,
    bucket_quantile: float = 0.9,
) -> torch.Tensor:
    """InfoNCE of ``logits = s I T^T`` against targets realigned by transport::

        m_i = sum_j P_ij                      (image i's mass not in the bucket)
        Y   = (1 - alpha) diag(m) + alpha P
        L   = 1/2 [ -sum_ij Y_ij log softmax_j(logits)_ij / sum Y
                    -sum_ij Y_ij log softmax_i(logits)_ij / sum Y ]

    ``P`` comes from :func:`realigned_targets` on the detached cosine similarities: a
    target, not a path for gradients. ``alpha`` = 0 keeps the given pairs, weighted by how
    much of them the bucket left; 1 (the default) trusts the plan alone, and ``clip+ot``
    then adds the given pairs back, Norton's mix of the two. With no pair in the bucket and
    ``P = I`` the loss is CLIP's. ``weights`` ``[B]`` scale each image's row and column.
    """
    if text.shape[0] != image.shape[0]:
        raise ClipforgeError(f"loss 'ot' needs one caption per image: {ONE_CAPTION}")
    with torch.no_grad():
        plan, _ = realigned_targets(image @ text.T, epsilon, iters, bucket_quantile)
        target = alpha * plan + (1 - alpha) * torch.diag(plan.sum(dim=1))
        if weights is not None:
            target = target * weights[:, None]
    logits = scale * image @ text.T
    if bias is not None:
        logits = logits + bias
    # A bucket above every pair (quantile 1, a collapsed batch) can take all the mass:
    # then nothing is a target and the loss is 0, not 0 / 0.
    total = target.sum().clamp_min(torch.finfo(target.dtype).tiny)
    li = -(target * logits.log_softmax(dim=1)).sum() / total
    lt = -(target * logits.log_softmax(dim=0)).sum() / total
    return (li + lt) / 2


class OTObjective(Objective):
    """:func:`ot_loss` as an objective."""

    def __init__(
        self,
        alpha: float = 1.0,
        epsilon: float = 0.05,
        iters: int = 50,
        bucket_quantile: float = 0.9,
    ) -> None:
        super().__init__()
        for name, value in (("ot_alpha", alpha), ("ot_epsilon", epsilon),
                            ("ot_iters", iters), ("ot_bucket_quantile", bucket_quantile)):  # fmt: skip
            check_field(OTOptions, name, value)
        self.alpha, self.epsilon, self.iters = alpha, epsilon, iters
        self.bucket_quantile = bucket_quantile
        self._last: dict[str, float] = {}

    def forward(self, f: Features) -> torch.Tensor:
        reject_hard_negatives(f, "ot", ONE_CAPTION)
        if f.owner is not None:
            raise ClipforgeError(f"loss 'ot' does not support --caption all: {ONE_CAPTION}")
        loss = ot_loss(
            f.image, f.text, f.scale, f.bias, f.weights,
            self.alpha, self.epsilon, self.iters, self.bucket_quantile,
        )  # fmt: skip
        return loss


@dataclass
class OTOptions:
    ot_alpha: float = option(
        1.0, "ot: weight of the transport plan in the targets (0 = the given pairs, "
        "less what the bucket took)",
        check=probability,
    )  # fmt: skip
    ot_epsilon: float = option(
        0.05, "ot: entropic regularisation of Sinkhorn, in cosine-similarity units",
        check=positive,
    )  # fmt: skip
    ot_iters: int = option(50, "ot: Sinkhorn iterations", check=count)
    ot_bucket_quantile: float = option(
        0.9, "ot: the bucket's similarity to everything, as a quantile of the batch's "
        "negative similarities (higher: more pairs judged unmatched)", check=probability,
    )  # fmt: skip


def _build(o: OTOptions, run: Any) -> Objective:
    reject_hard_negatives(run, "ot", ONE_CAPTION)
    if getattr(run, "caption", "random") == "all":
        raise ClipforgeError(f"loss 'ot' does not support --caption all: {ONE_CAPTION}")
    return OTObjective(o.ot_alpha, o.ot_epsilon, o.ot_iters, o.ot_bucket_quantile)


register(
    "ot",
    LossSpec(
        _build,
        summary="InfoNCE against pairs realigned by Sinkhorn, with a bucket for "
        "unmatched ones (Norton)",
        options=OTOptions,
    ),
)
