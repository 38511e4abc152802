"""The ViT image tower."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.models.config import VisionConfig
from clipforge.models.transformer import Transformer


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned positions, pre-LN blocks, pooling, projection."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w**-0.5)
        self.pos_embed = nn.Parameter(torch.randn(grid * grid + 1, w) * w**-0.5)
        self.norm_pre = nn.LayerNorm(w) if cfg.pre_norm else nn.Identity()
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, act)
        self.norm_post = nn.LayerNorm(w)
        self.proj = nn.Linear(w, embed_dim, bias=False)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-layer tokens ``[B, 1 + grid**2, width]`` (class token first), after norm_post."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
        x = self.transformer(self.norm_pre(x))
        return self.norm_post(x) if self.cfg.pool == "cls" else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens(images)
        if self.cfg.pool == "cls":
            pooled = x[:, 0]
        else:
            pooled = self.norm_post(x[:, 1:].mean(dim=1))
        return self.proj(pooled)
