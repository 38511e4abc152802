"""The causal text transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.bilinear import BilinearPool
from clipforge.models.config import TextConfig
from clipforge.models.transformer import Transformer


class TextTransformer(nn.Module):
    """Token + learned position embeddings, causal pre-LN blocks, end-token pooling.

    With ``pos="rope"`` there is no position table: every block rotates queries and keys
    by position (rotary embeddings, as CLIP-IN's text tower), so captions longer than
    the trained context run too. The defaults are OpenAI CLIP's. SigLIP's text tower (bidirectional attention, pooling
    at the last position, a projection with bias) is a matter of :class:`TextConfig` fields.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        rope = cfg.pos == "rope"
        self.pos_embed = (
            None if rope else nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        )
        self.transformer = Transformer(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, act, norm_eps=cfg.norm_eps,
            rope_base=cfg.rope_base if rope else None,
        )  # fmt: skip
        self.norm_final = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=cfg.proj_bias)
        self.bilinear = (
            BilinearPool(cfg.width, cfg.bilinear, embed_dim, cfg.norm_eps, lag=1)
            if cfg.bilinear
            else None
        )
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def add_positions(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[T, L, width]`` plus the learned positions of their ``L``
        places (rotary positions are applied inside attention: ``x`` as it is)."""
        if self.pos_embed is None:
            return x
        return x + self.pos_embed[: x.shape[1]].to(x.dtype)

    def forward(
        self, tokens: torch.Tensor, with_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The caption embedding ``[T, embed_dim]``; with ``with_tokens`` also every
        position's projected feature ``[T, context_length, embed_dim]`` and the mask of
        the caption's own tokens (start to end token; padding False), from the same pass.
        The features are padded back to the full context so that batches of different
        caption lengths stack (the distributed gather needs equal shapes)."""
        full = tokens.shape[1]
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        if self.cfg.pool == "argmax" and self.cfg.causal:
            # The end token has the largest id of the vocabulary, so argmax finds it.
            pos = tokens.argmax(dim=-1)
            # Causal attention means positions after the last end token cannot influence it,
            # so the padded tail of the batch is dropped: short captions cost short compute.
            tokens = tokens[:, : int(pos.max()) + 1]
        elif self.cfg.pool == "argmax":
            # Bidirectional attention sees the padding too: nothing may be trimmed.
            pos = tokens.argmax(dim=-1)
        else:
            pos = torch.full_like(rows, tokens.shape[1] - 1)
        length = tokens.shape[1]
        x = self.add_positions(self.token_embed(tokens))
        if not with_tokens and self.bilinear is None and self.transformer.can_pool_early():
            # Only the pooled position leaves the tower: its last block runs for that row.
            x = self.transformer(x, causal=self.cfg.causal, at=pos)
            return self.proj(self.norm_final(x))
        x = self.transformer(x, causal=self.cfg.causal)
        pooled = self.proj(self.norm_final(x[rows, pos]))
        if self.bilinear is not None:
            # The caption's own tokens, start to end token (padding after it is left out).
            own = torch.arange(length, device=tokens.device)[None, :] <= pos[:, None]
            pooled = pooled + self.bilinear(x, own)
        if not with_tokens:
            return pooled
        feats = F.pad(self.proj(self.norm_final(x)), (0, 0, 0, full - length))
        mask = torch.arange(full, device=tokens.device)[None, :] <= pos[:, None]
        return pooled, feats, mask
