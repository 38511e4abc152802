"""A small caption decoder that reads image tokens (CoCa's captioning head).

A causal text transformer whose every block also cross-attends to the image tower's
token features. It predicts the next token of a caption given the caption so far and
the image; :mod:`clipforge.models.generate` decodes captions with it and the ``coca``
objective trains it beside the contrastive towers.

The decoder works on a compact vocabulary: ``ids`` lists the tokenizer ids it knows (the
start and end tokens included) and every other id becomes one unknown token. A caption
corpus like the shapes world uses a few dozen of CLIP's 49408 ids; a softmax over all of
them would cost more than the rest of a tiny model's step. ``ids`` covering the whole
tokenizer vocabulary is the general case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.transformer import MLP, Attention


@dataclass
class DecoderConfig:
    """The decoder's architecture; ``image_dim`` is the width of the image token features
    it cross-attends to (the model's ``embed_dim``), ``vocab`` the number of tokenizer
    ids it knows (its output has one more: the unknown token)."""

    image_dim: int
    vocab: int
    context_length: int = 32
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    tied: bool = True  # the output layer is the input embedding, transposed
    act: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        return cls(**d)


class CrossAttention(nn.Module):
    """Multi-head attention of the caption positions (queries) over image tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mask`` ``[B, L, N]`` bool (True: may attend), SyCoCa's attentive masking."""
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention, cross-attention to the image, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross = CrossAttention(width, heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=True)
        x = x + self.cross(self.norm2(x), memory, mask)
        return x + self.mlp(self.norm3(x))


class CaptionDecoder(nn.Module):
    """Next-token logits ``[B, L, vocab + 1]`` of captions given image tokens.

    ``ids`` (a buffer, saved with the weights) maps decoder indices to tokenizer ids;
    index ``vocab`` is the unknown token, which no tokenizer id decodes to.
    """

    def __init__(self, cfg: DecoderConfig, ids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if ids is None:
            ids = torch.arange(cfg.vocab)
        if ids.shape != (cfg.vocab,):
            raise ValueError(f"decoder vocabulary: {cfg.vocab} ids expected, got {ids.shape}")
        self.register_buffer("ids", ids.long().clone())
        w = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab + 1, w)
        self.pos_embed = nn.Parameter(torch.randn(cfg.context_length, w) * 0.01)
        self.image_proj = nn.Linear(cfg.image_dim, w)
        self.image_norm = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(
            DecoderBlock(w, cfg.heads, cfg.mlp_ratio, cfg.act) for _ in range(cfg.layers)
        )
        self.norm_final = nn.LayerNorm(w)
        self.head = None if cfg.tied else nn.Linear(w, cfg.vocab + 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.token_embed.weight, std=0.02)
        n = max(1, len(self.blocks))
        for name, p in self.blocks.named_parameters():
            if name.endswith(("proj.weight", "fc2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def unknown(self) -> int:
        return self.cfg.vocab

    def to_decoder_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids -> decoder indices (ids the decoder does not know -> unknown)."""
        top = max(int(tokens.max()) if tokens.numel() else 0, int(self.ids.max())) + 1
        table = torch.full((top,), self.unknown, dtype=torch.long, device=tokens.device)
        table[self.ids] = torch.arange(self.cfg.vocab, device=tokens.device)
        return table[tokens.long()]

    def to_tokenizer_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Decoder indices -> tokenizer ids; the unknown token becomes -1."""
        padded = torch.cat([self.ids, self.ids.new_full((1,), -1)])
        return padded[index]

    def memory(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """The image tokens in the decoder's width, computed once per image."""
        return self.image_norm(self.image_proj(image_tokens.to(self.image_proj.weight.dtype)))

    def forward(
        self,
        index: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        *,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, vocab + 1]`` at each position of decoder indices ``index``
        ``[B, L]``; give ``image_tokens`` ``[B, N, image_dim]`` or their :meth:`memory`.
        ``mask`` ``[B, L, N]`` (True: position may see that image token) restricts the
        cross-attention."""
        if memory is None:
            if image_tokens is None:
                raise ValueError("the decoder needs image_tokens or memory")
            memory = self.memory(image_tokens)
        length = index.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(f"{length} positions, the decoder holds {self.cfg.context_length}")
        x = self.token_embed(index) + self.pos_embed[:length]
        for blk in self.blocks:
            x = blk(x, memory, mask)
        x = self.norm_final(x)
        weight = self.token_embed.weight if self.head is None else self.head.weight
        return F.linear(x, weight)


def decoder_from_payload(payload: dict[str, Any]) -> CaptionDecoder:
    """A decoder from what a checkpoint stores of it (``config`` and ``state``), eval mode."""
    cfg = DecoderConfig.from_dict(payload["config"])
    state = payload["state"]
    dec = CaptionDecoder(cfg, state["ids"])
    dec.load_state_dict(state, strict=True)
    return dec.eval()


__all__ = ["CaptionDecoder", "CrossAttention", "DecoderConfig", "decoder_from_payload"]
