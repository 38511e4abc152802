"""Token-level late interaction (FILIP, Yao et al., 2022) as the contrastive score.

A pooled embedding must say "red square, blue circle" in one vector; late interaction
scores an image and a caption by matching their tokens instead. Each image patch finds
its most similar caption token and the image-to-text score is the mean of those maxima;
each caption token finds its best patch for the text-to-image score. The symmetric
InfoNCE then runs on these two score matrices. ``clip+filip`` keeps the pooled
embeddings trained (retrieval and zero-shot read them) beside the token-level term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, reject_hard_negatives, weighted_mean
from clipforge.losses.registry import LossSpec, register

ONE_CAPTION = "its scores pair each image with one caption"


def late_interaction(
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's two ``[B, T]`` score matrices from unit token features::

        s_I[i, j] = 1/N   sum_k  max_{l in caption j} <x_ik, y_jl>
        s_T[i, j] = 1/L_j sum_{l in caption j} max_k <x_ik, y_jl>

    ``image_tokens`` ``[B, N, D]``, ``text_tokens`` ``[T, L, D]``, ``text_mask``
    ``[T, L]`` (nonzero: the caption's own tokens, ``L_j`` of them; padding never scores).
    """
    sim = torch.einsum("bnd,tld->btnl", image_tokens, text_tokens)
    valid = text_mask > 0
    s_image = sim.masked_fill(~valid[None, :, None, :], float("-inf")).amax(dim=3).mean(dim=2)
    best_patch = sim.amax(dim=2)  # [B, T, L]
    s_text = (best_patch * valid[None]).sum(dim=2) / valid.sum(dim=1)[None]
    return s_image, s_text


def filip_loss(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1/2 [CE(s s_I, diag) + CE(s s_T^T, diag)]``: the image-to-text softmax over
    :func:`late_interaction`'s image-side scores, the text-to-image one over its text-side
    scores. ``weights`` ``[B]`` weight each pair's two terms."""
    s_image, s_text = late_interaction(image_tokens, text_tokens, text_mask)
    li_logits, lt_logits = scale * s_image, scale * s_text.T
    if bias is not None:
        li_logits, lt_logits = li_logits + bias, lt_logits + bias
    target = torch.arange(s_image.shape[0], device=s_image.device)
    li = F.cross_entropy(li_logits, target, reduction="none")
    lt = F.cross_entropy(lt_logits, target, reduction="none")
    return (weighted_mean(li, weights) + weighted_mean(lt, weights)) / 2


class FilipObjective(Objective):
    """:func:`filip_loss` on the model's per-token features."""

    needs_tokens = True

    def forward(self, f: Features) -> torch.Tensor:
        reject_hard_negatives(f, "filip", ONE_CAPTION)
        if f.owner is not None or f.text.shape[0] != f.image.shape[0]:
            raise ClipforgeError(f"loss 'filip' does not support --caption all: {ONE_CAPTION}")
        return filip_loss(
            f.extra["image_tokens"], f.extra["text_tokens"], f.extra["text_token_mask"],
            f.scale, f.bias, f.weights,
        )  # fmt: skip


def _pool(run: Any) -> str:
    from clipforge.models import get_model_config

    return get_model_config(run.model, run.model_args).vision.pool


def _build(_: None, run: Any) -> Objective:
    reject_hard_negatives(run, "filip", ONE_CAPTION)
    if getattr(run, "caption", "random") == "all":
        raise ClipforgeError(f"loss 'filip' does not support --caption all: {ONE_CAPTION}")
    if hasattr(run, "model") and _pool(run) == "grid":
        raise ClipforgeError(
            "loss 'filip' scores single image tokens, which grid pooling does not project: "
            "use vision.pool=mean, cls or map"
        )
    return FilipObjective()


register(
    "filip",
    LossSpec(
        _build,
        summary="InfoNCE over token-level late interaction: max over tokens, averaged (FILIP)",
    ),
)
