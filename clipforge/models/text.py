"""The causal text transformer."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.models.config import TextConfig
from clipforge.models.transformer import Transformer


class TextTransformer(nn.Module):
    """Token + learned position embeddings, causal pre-LN blocks, end-token pooling."""

    def __init__(self, cfg: TextConfig, embed_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, act)
        self.norm_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # The end token has the largest id of the vocabulary, so argmax finds it.
        eot = tokens.argmax(dim=-1)
        # Causal attention means positions after the last end token cannot influence it,
        # so the padded tail of the batch is dropped: short captions cost short compute.
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]
        x = self.token_embed(tokens) + self.pos_embed[:length].to(self.token_embed.weight.dtype)
        x = self.transformer(x, causal=True)
        x = self.norm_final(x[torch.arange(x.shape[0], device=x.device), eot])
        return self.proj(x)
