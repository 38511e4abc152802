"""The CLIP dual encoder."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.data.hf_tokenizers import TokenizerSpec
from clipforge.models.config import ModelConfig
from clipforge.models.external_text import ExternalText
from clipforge.models.moe import make_experts
from clipforge.models.text import TextTransformer
from clipforge.models.vision import VisionTransformer


class CLIPOutput(NamedTuple):
    image: torch.Tensor  # [B, D], L2-normalised
    text: torch.Tensor  # [B, D], L2-normalised
    scale: torch.Tensor  # scalar: exp(logit_scale), clamped at 100
    bias: torch.Tensor | None  # scalar logit bias, for sigmoid losses
    # With forward(..., with_tokens=True): per-token features for late interaction.
    image_tokens: torch.Tensor | None = None  # [B, n_patches, D], L2-normalised
    text_tokens: torch.Tensor | None = None  # [B, context, D], L2-normalised
    text_mask: torch.Tensor | None = None  # [B, context] bool: the caption's own tokens


class CLIP(nn.Module):
    """Image tower + text tower + learnable temperature (and optional logit bias)."""

    def __init__(
        self,
        cfg: ModelConfig,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.act)
        self.text: nn.Module = (
            ExternalText(cfg.text, cfg.embed_dim)
            if cfg.text.external_dim
            else TextTransformer(cfg.text, cfg.embed_dim, cfg.act)
        )
        if cfg.moe_experts:
            make_experts(self, cfg.moe_experts, cfg.moe_top_k, cfg.act)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(init_logit_bias)))
            if init_logit_bias is not None
            else None
        )
        # Modules an objective trained beside the towers (``"decoder"``: a caption decoder),
        # filled by :func:`clipforge.models.load`. Not submodules: the model's state dict,
        # exports and every reader of the towers stay as they are.
        self.heads: dict[str, nn.Module] = {}
        # The text tokenizer the weights were trained with when it is not CLIP's BPE (a
        # SigLIP checkpoint's SentencePiece model), set by :func:`clipforge.models.load`;
        # callers get the tokenizer from :func:`clipforge.models.tokenizer_for`.
        self.tokenizer_spec: TokenizerSpec | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        # Residual-branch projections start small (GPT-2 style) so deep stacks train stably.
        for tower in (self.visual, self.text):
            n = len(tower.transformer.blocks)
            for name, p in tower.transformer.named_parameters():
                if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * n))
                elif name.endswith(("qkv.weight", "fc1.weight")):
                    nn.init.normal_(p, std=0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
            if isinstance(tower.proj, nn.Linear):  # SigLIP's image tower has no projection
                nn.init.normal_(tower.proj.weight, std=tower.proj.in_features**-0.5)
                if tower.proj.bias is not None:
                    nn.init.zeros_(tower.proj.bias)
        pool = self.visual.attn_pool
        if pool is not None:
            for name, p in pool.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif name.endswith(("qkv.weight", "fc1.weight", "proj.weight", "fc2.weight")):
                    nn.init.normal_(p, std=0.02)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # Pixels come as float32; a model held in another dtype (float64 checks, bf16
        # weights) takes them in its own.
        x = self.visual(images.to(self.logit_scale.dtype))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids ``[T, L]``, or with ``text.external_dim`` pre-computed caption
        embeddings ``[T, D]``, to text embeddings."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def logit_scale_exp(self) -> torch.Tensor:
        """``exp(logit_scale)``, capped at ``cfg.logit_scale_max`` (100 unless set otherwise)."""
        cap = self.cfg.logit_scale_max
        return self.logit_scale.exp() if cap is None else self.logit_scale.exp().clamp(max=cap)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, with_tokens: bool = False
    ) -> CLIPOutput:
        """Normalised embeddings and the temperature; ``with_tokens`` adds the per-token
        features of both towers (:class:`CLIPOutput`), computed in the same passes."""
        if not with_tokens:
            return CLIPOutput(
                self.encode_image(images, normalize=True),
                self.encode_text(tokens, normalize=True),
                self.logit_scale_exp(),
                self.logit_bias,
            )
        image, image_tokens = self.visual(images.to(self.logit_scale.dtype), with_tokens=True)
        text, text_tokens, mask = self.text(tokens, with_tokens=True)
        return CLIPOutput(
            F.normalize(image, dim=-1),
            F.normalize(text, dim=-1),
            self.logit_scale_exp(),
            self.logit_bias,
            F.normalize(image_tokens, dim=-1),
            F.normalize(text_tokens, dim=-1),
            mask,
        )
