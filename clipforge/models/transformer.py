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

    def forward_at(self, x: torch.Tensor, at: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """The attention output at one position per sequence, ``at`` ``[B]``: ``[B, width]``,
        equal to ``forward(x, causal)[rows, at]``.

        Keys and values still come from every token; only the query, the mix and the
        output projection shrink to one row, which is all a pooled tower reads of its
        last block. The fused projection runs on every token, so an adapter that wraps
        ``qkv`` (LoRA) still applies."""
        if self.rope_base is not None:
            raise ValueError("forward_at does not rotate a lone query; use forward")
        b, t, d = x.shape
        rows = torch.arange(b, device=x.device)
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)
        q = qkv[rows, at, 0].unsqueeze(2)  # [B, heads, 1, head]
        k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        # A causal query at position p sees keys 0..p, which in the full pass is_causal's
        # mask gives it; alone it needs the mask spelled out.
        mask = (torch.arange(t, device=x.device)[None, :] <= at[:, None])[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if causal else None)
        return self.proj(y.reshape(b, d))


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

    def forward(
        self, x: torch.Tensor, causal: bool = False, at: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block's output ``[B, T, width]``; with ``at`` (one position per sequence,
        ``[B]``) only the rows at those positions, ``[B, width]``."""
        if at is not None:
            y = x[torch.arange(x.shape[0], device=x.device), at]
            y = y + self.attn.forward_at(self.norm1(x), at, causal)
            return y + self.mlp(self.norm2(y))
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

    def can_pool_early(self) -> bool:
        """Whether :meth:`forward`'s ``at`` may shorten the last block: not with rotary
        positions (a lone query would need its own rotation) and not with a mixture of
        experts there (its router's load statistics would count one token per sequence)."""
        if not len(self.blocks):
            return False
        last = self.blocks[-1]
        return last.attn.rope_base is None and isinstance(last.mlp, MLP)

    def forward(
        self, x: torch.Tensor, causal: bool = False, at: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every token's output ``[B, T, width]``; with ``at`` (``[B]`` positions; see
        :meth:`can_pool_early`) only the last block's rows at those positions,
        ``[B, width]``: a tower that pools one token needs no more, and skipping the other
        rows' output projection and MLP there saves most of that block's work."""
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            pos = at if i == last else None
            if self.checkpointing and torch.is_grad_enabled():
                # Keeps only each block's input; the backward runs the block again.
                x = checkpoint(blk, x, causal, pos, use_reentrant=False)
            else:
                x = blk(x, causal, pos)
        return x
