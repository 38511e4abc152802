"""Region-text contrast (after CLOC, Chen et al., 2024, and FG-CLIP 2, Xie et al., 2025).

A pooled image embedding answers "what is in the picture"; a region embedding must
answer "what is in this box". Each object's box is RoI-pooled over the image tower's
patch-token grid (:func:`~clipforge.models.regions.roi_pool`) and contrasted with the
text tower's embedding of its phrase ("a red circle"), both ways, over every region of
the batch: a colour can only be matched to the shape it sits on. The shapes world knows
every object's box and phrase; the data pipeline carries them when this objective asks
(``Objective.regions``). ``clip+region`` keeps the global embeddings trained.

FG-CLIP 2's textual intra-modal contrast (TIC) is an option (``--region-tic W``): each
distinct phrase is pushed away from its ``--region-tic-k`` most similar other phrases in
the text tower, so "a red circle" and "a red square" do not collapse onto "red".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective
from clipforge.losses.registry import LossSpec, register
from clipforge.models.regions import roi_pool
from clipforge.ranges import count, non_negative


def region_contrast(
    regions: torch.Tensor, phrases: torch.Tensor, group: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``1/2 [L_r + L_p]`` over ``n`` unit region and phrase embeddings ``[n, D]``.

    ``group[r]`` numbers region ``r``'s phrase among the ``u`` distinct phrases (equal
    phrases of different regions are one class, not each other's negatives); ``U`` holds
    the first embedding of each group::

        L_r = mean_r  -log softmax_v(s R_r . U_v)[group[r]]
        L_p = mean_v  -log sum_{r in v} softmax_r(s U_v . R_r)
    """
    u = int(group.max()) + 1
    uniq = phrases[first_of(group)]
    logits = scale * regions @ uniq.T  # [n, u]
    l_r = F.cross_entropy(logits, group)
    member = group[None, :] == torch.arange(u, device=group.device)[:, None]  # [u, n]
    logp = logits.T.log_softmax(dim=1)
    l_p = -torch.logsumexp(logp.masked_fill(~member, float("-inf")), dim=1).mean()
    return (l_r + l_p) / 2


def tic_loss(phrases: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """``mean_v log(1 + sum_{w in top-k(v)} e^{s (U_v . U_w - 1)})`` over distinct unit
    phrase embeddings ``[u, D]``: the InfoNCE of each phrase against itself (similarity 1)
    with its ``k`` most similar other phrases as negatives. Zero for a single phrase."""
    u = phrases.shape[0]
    if u < 2:
        return phrases.sum() * 0
    sim = phrases @ phrases.T
    sim = sim.masked_fill(torch.eye(u, dtype=torch.bool, device=sim.device), float("-inf"))
    top = sim.topk(min(k, u - 1), dim=1).values
    zero = torch.zeros(u, 1, dtype=sim.dtype, device=sim.device)
    return torch.logsumexp(torch.cat([zero, scale * (top - 1)], dim=1), dim=1).mean()


def first_of(group: torch.Tensor) -> torch.Tensor:
    """``[u]``: the first index of each group ``0..u-1``."""
    u = int(group.max()) + 1
    first = torch.full((u,), group.shape[0], dtype=torch.long, device=group.device)
    return first.scatter_reduce_(0, group, torch.arange(group.shape[0], device=group.device),
                                 "amin")  # fmt: skip


def phrase_groups(tokens: torch.Tensor) -> torch.Tensor:
    """``[n]`` group of each phrase: equal token rows share one, numbered from 0."""
    return torch.unique(tokens, dim=0, return_inverse=True)[1]


class RegionObjective(Objective):
    """:func:`region_contrast` of RoI-pooled patch tokens with phrase embeddings, plus
    ``tic`` times :func:`tic_loss` on the distinct phrases."""

    needs_tokens = True

    def __init__(self, max_regions: int = 4, tic: float = 0.0, tic_k: int = 3) -> None:
        super().__init__()
        check_field(RegionOptions, "region_max", max_regions)
        check_field(RegionOptions, "region_tic", tic)
        check_field(RegionOptions, "region_tic_k", tic_k)
        self.regions = max_regions
        self.tic, self.tic_k = tic, tic_k
        self._last: dict[str, float] = {}

    def forward(self, f: Features) -> torch.Tensor:
        mask = f.extra["region_mask"] > 0
        pooled = roi_pool(f.extra["image_tokens"], f.extra["region_boxes"])[mask]
        if pooled.shape[0] == 0:  # no object inside any crop: nothing to contrast
            return f.extra["image_tokens"].sum() * 0
        phrases = f.extra["region_text"][mask]
        group = phrase_groups(f.extra["region_tokens"][mask])
        loss = region_contrast(pooled, phrases, group, f.scale)
        self._last = {"region/regions": float(pooled.shape[0])}
        if self.tic > 0:
            tic = tic_loss(phrases[first_of(group)], f.scale, self.tic_k)
            self._last["region/tic"] = float(tic.detach())
            loss = loss + self.tic * tic
        return loss

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class RegionOptions:
    region_max: int = option(4, "region: most object regions per image", check=count)
    region_tic: float = option(
        0.0, "region: weight of the textual intra-modal contrast (TIC; 0 = off)",
        check=non_negative,
    )  # fmt: skip
    region_tic_k: int = option(
        3, "region: TIC negatives per phrase (its most similar)", check=count
    )


def _build(o: RegionOptions, run: Any) -> Objective:
    from clipforge.models import get_model_config

    model = get_model_config(getattr(run, "model", "tiny"), getattr(run, "model_args", None))
    if model.vision.pool == "grid":
        raise ClipforgeError(
            "loss 'region' pools single image tokens, which grid pooling does not project: "
            "use vision.pool=mean, cls or map"
        )
    if getattr(run, "patch_dropout", 0.0):
        raise ClipforgeError("loss 'region' needs the whole token grid: drop --patch-dropout")
    return RegionObjective(o.region_max, o.region_tic, o.region_tic_k)


register(
    "region",
    LossSpec(
        _build,
        summary="region-text contrast: RoI-pooled patch tokens vs object phrases (CLOC, "
        "FG-CLIP 2; TIC option)",
        contrastive=False,
        options=RegionOptions,
    ),
)
