"""The ViT image tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.bilinear import BilinearPool
from clipforge.models.config import VisionConfig
from clipforge.models.posembed import sincos_2d
from clipforge.models.tome import merged_forward
from clipforge.models.transformer import MLP, Transformer


class AttentionPool(nn.Module):
    """Multi-head attention pooling ("MAP", SigLIP's image head).

    A learned probe token attends over all patch tokens; the result goes through a
    pre-LN MLP with a residual. ``qkv`` holds the query, key and value projections stacked
    (as in ``nn.MultiheadAttention.in_proj_weight``): the query applies to the probe only,
    key and value to the tokens.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, norm_eps: float):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, w = self.heads, self.qkv.weight
        bias = self.qkv.bias
        # The probe's query is the same for every image: project it once, not per sample.
        q = F.linear(self.probe.to(x.dtype), w[:d], bias[:d])
        q = q.view(1, 1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)
        k, v = F.linear(x, w[d:], bias[d:]).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj(y.transpose(1, 2).reshape(b, 1, d))
        y = y + self.mlp(self.norm(y))
        return y[:, 0]


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions down to the patch grid, then a 1x1 to the width.

    Overlapping early convolutions let a small ViT see edges and corners inside a patch
    from the first step (Xiao et al., 2021), which is what shape recognition needs on
    tiny images; the token grid and so the transformer's cost are the same as with patches.
    """

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = 3, max(16, width // 4)
        for _ in range(patch_size.bit_length() - 1):
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.GELU()]
            c_in, c = c, min(2 * c, width)
        layers.append(nn.Conv2d(c_in, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned positions, pre-LN blocks, pooling, projection.

    The defaults are OpenAI CLIP's ViT. SigLIP's tower (no class token, patch-embedding bias,
    no pre-norm, attention-pool head, no projection) is a matter of :class:`VisionConfig`
    fields; ``class_embedding`` and ``attn_pool`` are ``None`` where the config has none.
    """

    def __init__(self, cfg: VisionConfig, embed_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        grid = cfg.image_size // cfg.patch_size
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.patch_size, w)
        else:
            self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(w) * w**-0.5) if cfg.class_token else None
        n_pos = grid * grid + int(cfg.class_token)
        self.pos_embed = nn.Parameter(torch.randn(n_pos, w) * w**-0.5)
        if cfg.pos_init == "sincos":
            with torch.no_grad():
                self.pos_embed[int(cfg.class_token) :] = sincos_2d(grid, w)
                if cfg.class_token:
                    self.pos_embed[0] = 0.0
        # FLIP's patch dropout: the share of patch tokens each training forward drops (a
        # training setting, not part of the architecture; eval mode sees every patch).
        self.patch_dropout = 0.0
        # ToMe's token merging: tokens merged after each block's attention, in eval mode
        # only (an inference setting, :mod:`clipforge.models.tome`; 0 = off).
        self.merge_tokens = 0
        self.norm_pre = nn.LayerNorm(w, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.transformer = Transformer(
            w, cfg.layers, cfg.heads, cfg.mlp_ratio, act, norm_eps=cfg.norm_eps
        )
        self.norm_post = nn.LayerNorm(w, eps=cfg.norm_eps)
        pooled_width = w * (1 + cfg.pool_grid**2) if cfg.pool == "grid" else w
        self.proj: nn.Module = (
            nn.Linear(pooled_width, embed_dim, bias=cfg.proj_bias)
            if cfg.proj_type == "linear"
            else nn.Identity()
        )
        self.attn_pool = (
            AttentionPool(w, cfg.heads, cfg.mlp_ratio, act, cfg.norm_eps)
            if cfg.pool == "map"
            else None
        )
        self.bilinear = (
            BilinearPool(w, cfg.bilinear, embed_dim, cfg.norm_eps) if cfg.bilinear else None
        )

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-layer tokens ``[B, n_tokens, width]`` (class token first, if any).

        ``norm_post`` is applied here unless pooling is ``mean`` (which normalises the mean).
        With token merging there are fewer of them (see :meth:`sized_tokens`).
        """
        return self.sized_tokens(images)[0]

    def sized_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`tokens` and, with token merging on, how many patches each stands for
        ``[B, n, 1]`` (None without merging: one each)."""
        x = self._embed(images)
        size = None
        if self.merge_tokens > 0 and not self.training:
            if self.cfg.pool == "grid" or self.cfg.bilinear:
                raise ClipforgeError(
                    "token merging cannot be used with vision.pool=grid or vision.bilinear"
                )
            x, size = merged_forward(
                self.transformer, self.norm_pre(x), self.merge_tokens, int(self.cfg.class_token)
            )
        else:
            x = self.transformer(self.norm_pre(x))
        return (x if self.cfg.pool in ("mean", "grid") else self.norm_post(x)), size

    def pools_early(self) -> bool:
        """Whether the last block may run for the class token alone: class-token pooling
        reads one row of it (see :meth:`Transformer.can_pool_early`)."""
        return (
            self.cfg.pool == "cls" and not self.cfg.bilinear and self.transformer.can_pool_early()
        )

    @staticmethod
    def class_rows(x: torch.Tensor) -> torch.Tensor:
        """The class token's position in every sequence of ``x``: the ``at`` of the
        last block when :meth:`pools_early`."""
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def pool_class_row(self, row: torch.Tensor) -> torch.Tensor:
        """The embedding of the last block's class-token row ``[B, width]``."""
        return self.proj(self.norm_post(row))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        # The transformer's input: patches, class token, positions, patch dropout.
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)
        return x

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        # After the position embeddings, so each kept token still says where it was; the
        # class token always stays. A fresh uniform subset per sample (global torch RNG,
        # which a checkpoint saves, so resume stays exact).
        start = int(self.cfg.class_token)
        b, n, w = x.shape[0], x.shape[1] - start, x.shape[2]
        keep = max(1, int(n * (1 - self.patch_dropout)))
        idx = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep]
        patches = x[:, start:].gather(1, idx[..., None].expand(-1, -1, w))
        return torch.cat([x[:, :start], patches], dim=1)

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each patch token of ``tokens()`` output ``x`` projected like a pooled embedding
        ``[B, n_patches, embed_dim]``: the per-token view that late interaction (FILIP)
        scores."""
        if self.cfg.pool == "grid":
            raise ClipforgeError(
                "token features need a projection of one token; grid pooling projects the "
                "concatenated cell means (use vision.pool=mean, cls or map)"
            )
        patches = x[:, int(self.cfg.class_token) :]
        if self.cfg.pool == "mean":  # tokens() left them unnormalised for the mean
            patches = self.norm_post(patches)
        return self.proj(patches)

    def forward(
        self, images: torch.Tensor, with_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The image embedding ``[B, embed_dim]``; with ``with_tokens`` also
        :meth:`token_features`, from the same pass."""
        merging = self.merge_tokens > 0 and not self.training
        if not with_tokens and not merging and self.pools_early():
            x = self._embed(images)
            return self.pool_class_row(self.transformer(self.norm_pre(x), at=self.class_rows(x)))
        x, size = self.sized_tokens(images)
        if with_tokens:
            return self._pool(x, size), self.token_features(x)
        return self._pool(x, size)

    def _pool(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.pool == "cls":
            pooled = x[:, 0]
        elif self.attn_pool is not None:
            pooled = self.attn_pool(x)
        elif self.cfg.pool == "grid":
            pooled = self._grid_pool(x[:, int(self.cfg.class_token) :])
        elif size is not None:  # merged tokens: the mean over the patches they stand for
            start = int(self.cfg.class_token)
            pooled = self.norm_post(
                (x[:, start:] * size[:, start:]).sum(1) / size[:, start:].sum(1)
            )
        else:
            pooled = self.norm_post(x[:, int(self.cfg.class_token) :].mean(dim=1))
        if self.bilinear is not None:
            return self.proj(pooled) + self.bilinear(x[:, int(self.cfg.class_token) :])
        return self.proj(pooled)

    def _grid_pool(self, x: torch.Tensor) -> torch.Tensor:
        # Mean pooling keeps what is in the image but mixes away where; the cell means keep
        # "red on the left" a linear feature, which relations between objects need.
        b, n, w = x.shape
        side, g = int(n**0.5), self.cfg.pool_grid
        cells = x.reshape(b, g, side // g, g, side // g, w).mean(dim=(2, 4)).reshape(b, g * g, w)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), cells], dim=1)
        return self.norm_post(pooled).flatten(1)
