"""Pre-LayerNorm transformer blocks shared by the image and text towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.models.posembed import apply_rope, rope_tables


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU; needed to reproduce its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection and SDPA.

    ``rope_base`` set: queries and keys are rotated by their positions (rotary
    embeddings, :func:`~clipforge.models.posembed.apply_rope`)."""

    def __init__(self, width: int, heads: int, rope_base: float | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope_base is not None:
            cos, sin = rope_tables(t, d // self.heads, self.rope_base, x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


def make_act(act: str) -> nn.Module:
    """``gelu`` (exact), ``quick_gelu`` (OpenAI CLIP) or ``gelu_tanh`` (SigLIP's approximation)."""
    if act == "quick_gelu":
        return QuickGELU()
    if act == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return nn.GELU()


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        norm_eps: float = 1e-5,
        rope_base: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads, rope_base)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        norm_eps: float = 1e-5,
        rope_base: float | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, act, norm_eps, rope_base) for _ in range(layers)
        )
        # Gradient checkpointing, a training setting (``--grad-checkpointing``).
        self.checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                # Keeps only each block's input; the backward runs the block again.
                x = checkpoint(blk, x, causal, use_reentrant=False)
            else:
                x = blk(x, causal)
        return x
