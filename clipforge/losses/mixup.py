"""Geodesic multi-modal mixup (Oh et al., 2023, "Geodesic Multi-Modal Mixup for Robust
Fine-Tuning")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.config import check_field, option
from clipforge.losses.base import Features, StepSeeded, first_positive, weighted_mean
from clipforge.losses.registry import LossSpec, register
from clipforge.ranges import positive


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """Spherical interpolation of unit rows: ``(sin((1-l) th) a + sin(l th) b) / sin th``.

    The mix stays on the sphere (a linear mix would fall inside it and be an easy
    negative by its norm alone). ``cos th`` is kept off +-1: at ``th = 0`` the formula is
    0/0 (and its gradient infinite) although the limit is simply ``a``.
    """
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos)
    return (torch.sin((1 - lam) * theta) * a + torch.sin(lam * theta) * b) / torch.sin(theta)


def mixup_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    lam: float,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE whose softmaxes also hold the ``B`` geodesic mixes as hard negatives.

    ``m_k = slerp(x_k, y_{p(k)}, lam)`` mixes image ``k`` with its (first) caption. Each
    image's softmax runs over the ``T`` texts and the ``B`` mixes, each caption's over
    the ``B`` images and the ``B`` mixes::

        L_i2t = 1/B sum_i -log e^{s x_i.y_i} / (sum_j e^{s x_i.y_j} + sum_k e^{s x_i.m_k})
        L_t2i = 1/T' sum_j -log e^{s y_j.x_o(j)} / (sum_k e^{s y_j.x_k} + sum_k e^{s y_j.m_k})
        L = (L_i2t + L_t2i) / 2

    A mix sits between the two modalities, the region CLIP leaves empty (the modality
    gap), so contrasting against it improves alignment and uniformity. ``owner`` works as
    in :func:`clip_loss` (several captions per image average over their positives;
    hard-negative columns join the image-to-text softmax).
    """
    f = Features(image, text, scale, owner=owner)
    owner_full = f.owners()
    pos = f.positives()
    mixed = slerp(image, text[first_positive(f)], lam)
    logits_i = scale * image @ torch.cat([text, mixed]).T  # [B, T + B]
    logp = logits_i.log_softmax(dim=1)[:, : text.shape[0]]
    li = -(logp * pos).sum(dim=1) / pos.sum(dim=1)
    keep = owner_full >= 0
    logits_t = scale * text[keep] @ torch.cat([image, mixed]).T  # [T', 2B]
    lt = F.cross_entropy(logits_t, owner_full[keep], reduction="none")
    wt = None if weights is None else weights[owner_full[keep]]
    return (weighted_mean(li, weights) + weighted_mean(lt, wt)) / 2


class MixupObjective(StepSeeded):
    """:func:`mixup_loss` with one ratio per optimizer step, ``lam ~ Beta(alpha, alpha)``,
    drawn from ``seed`` and the step number (a resumed run draws the same ratios)."""

    def __init__(self, seed: int, alpha: float = 0.5) -> None:
        super().__init__(seed)
        check_field(MixupOptions, "mixup_alpha", alpha)
        self.alpha = alpha

    def ratio(self) -> float:
        return float(
            np.random.default_rng([self.seed, int(self.step)]).beta(self.alpha, self.alpha)
        )

    def forward(self, f: Features) -> torch.Tensor:
        return mixup_loss(f.image, f.text, f.scale, self.ratio(), f.weights, f.owner)


@dataclass
class MixupOptions:
    mixup_alpha: float = option(
        0.5, "mixup: the mixing ratio is drawn from Beta(alpha, alpha) each step", check=positive
    )


register(
    "mixup",
    LossSpec(
        lambda o, run: MixupObjective(getattr(run, "seed", 0), o.mixup_alpha),
        summary="InfoNCE with geodesic image-text mixes as hard negatives (m2-mix)",
        options=MixupOptions,
    ),
)
