"""CWCL: continuously weighted contrastive loss (Srinivasa et al., 2023, "CWCL: Cross-Modal
Transfer with Continuously Weighted Contrastive Loss")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, reject_hard_negatives, weighted_mean
from clipforge.losses.registry import LossSpec, register
from clipforge.losses.towers import embed, freeze
from clipforge.models import load


def soft_targets(reference: torch.Tensor) -> torch.Tensor:
    """``(1 + cos) / 2`` between the rows of ``reference``: CWCL's weights, in ``[0, 1]``."""
    return (1 + reference @ reference.T) / 2


def cwcl_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    ref_image: torch.Tensor,
    ref_text: torch.Tensor,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against continuous targets from a frozen reference tower.

    InfoNCE treats every non-matching pair as equally wrong. CWCL instead weights pair
    ``(a, k)`` by how alike the reference finds the anchor's partner and ``k`` within one
    modality, ``w = (1 + cos_ref) / 2``::

        L_t2i = 1/T sum_j  -sum_k W^img_{o(j),k} log softmax_k(s y_j.x_k) / sum_k W^img_{o(j),k}
        L_i2t = 1/B sum_i  -sum_j W^txt_{i,j}    log softmax_j(s x_i.y_j) / sum_j W^txt_{i,j}
        L = (L_i2t + L_t2i) / 2

    ``W^img`` holds the reference's image-image similarities, ``W^txt`` its text-text
    ones (for an image with several captions, the mean over its captions); the diagonal
    weight is 1, so CWCL reduces to CLIP when the reference finds all else dissimilar
    (``cos = -1``). ``ref_image`` ``[B, D']`` and ``ref_text`` ``[T, D']`` are
    L2-normalised; ``owner`` may map several captions to an image but hold no hard
    negatives (the reference would call them near-positives).
    """
    logits = scale * image @ text.T
    b, t = logits.shape
    if owner is None:
        owner = torch.arange(b, device=image.device)
    pos = (owner[None, :] == torch.arange(b, device=image.device)[:, None]).to(logits.dtype)
    w_txt = pos @ soft_targets(ref_text) / pos.sum(dim=1, keepdim=True)  # [B, T]
    w_img = soft_targets(ref_image)[owner]  # [T, B]
    li = -(w_txt * logits.log_softmax(dim=1)).sum(dim=1) / w_txt.sum(dim=1)
    lt = -(w_img * logits.T.log_softmax(dim=1)).sum(dim=1) / w_img.sum(dim=1)
    wt = None if weights is None else weights[owner]
    return (weighted_mean(li, weights) + weighted_mean(lt, wt)) / 2


NO_HARD_NEGATIVES = (
    "the reference finds a minimally edited caption similar, so the soft targets would reward it"
)


class CWCLObjective(Objective):
    """:func:`cwcl_loss` with the reference tower loaded from ``reference`` (a run folder or
    checkpoint); its embeddings of the batch are computed in :meth:`prepare`."""

    def __init__(self, reference: str | Path | None) -> None:
        super().__init__()
        if not reference:
            raise ClipforgeError(
                "loss 'cwcl' needs --reference RUN_DIR_OR_CHECKPOINT (the frozen tower whose "
                "within-modality similarities become the soft targets)"
            )
        self.reference = freeze(load(reference, what="cwcl reference"))

    def train(self, mode: bool = True) -> CWCLObjective:
        super().train(mode)
        self.reference.eval()  # frozen: never in training mode
        return self

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        ref_image, ref_text = embed(self.reference, images, tokens)
        return {"ref_image": ref_image, "text_ref": ref_text}

    def forward(self, f: Features) -> torch.Tensor:
        reject_hard_negatives(f, "cwcl", NO_HARD_NEGATIVES)
        return cwcl_loss(
            f.image, f.text, f.scale, f.extra["ref_image"], f.extra["text_ref"], f.weights, f.owner
        )


@dataclass
class CWCLOptions:
    reference: str | None = option(
        None, "cwcl: frozen reference model (run folder or checkpoint) for the soft targets"
    )


def _build(o: CWCLOptions, run: Any) -> Objective:
    reject_hard_negatives(run, "cwcl", NO_HARD_NEGATIVES)
    return CWCLObjective(o.reference)


register(
    "cwcl",
    LossSpec(
        _build,
        summary="soft targets from a frozen --reference tower's within-modality similarities",
        options=CWCLOptions,
    ),
)
