"""A text tower made of pre-computed embeddings (LLM2CLIP's setup: a large language
model's caption embeddings, computed once and stored with the data).

With ``text.external_dim D > 0`` the model has no text transformer: the caption side
is a LayerNorm and a trainable linear projection of a ``D``-wide vector that each
sample carries in its meta as ``text_embedding`` (a list of numbers; the trainer reads
it instead of the tokens). The external encoder that made the vectors is the locked
tower: it is not part of the model and gets no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.config import TextConfig
from clipforge.models.transformer import Transformer

# The meta field that holds each sample's external caption embedding.
TEXT_EMBEDDING = "text_embedding"


class ExternalText(nn.Module):
    """Normalise and project a pre-computed caption embedding ``[T, D]`` to ``[T, embed_dim]``."""

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.external_dim, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.external_dim, embed_dim, bias=cfg.proj_bias)
        # No blocks: the settings that reach into a text transformer (gradient
        # checkpointing, upcycling, layer counts) find an empty one.
        self.transformer = Transformer(cfg.external_dim, 0, 1, 1.0, "gelu")

    def forward(self, embeddings: torch.Tensor, with_tokens: bool = False) -> torch.Tensor:
        if with_tokens:
            raise ClipforgeError("a model with text.external_dim has no per-token text features")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.cfg.external_dim:
            raise ClipforgeError(
                f"meta {TEXT_EMBEDDING} must hold {self.cfg.external_dim} numbers per caption "
                f"(text.external_dim), got shape {tuple(embeddings.shape)}"
            )
        if not embeddings.is_floating_point():
            raise ClipforgeError(
                f"this model reads caption embeddings (meta {TEXT_EMBEDDING}), not token ids"
            )
        return self.proj(self.norm(embeddings.to(self.proj.weight.dtype)))


__all__ = ["TEXT_EMBEDDING", "ExternalText"]
