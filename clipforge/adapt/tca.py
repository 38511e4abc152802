"""``tca``: training-free token condensation in the vision tower at test time ("Is Less
More? Exploring Token Condensation as Training-free Test-time Adaptation", Wang et al.
2024), scored by the zero-shot classifier.

After block ``start`` and after each later block but the last, the patch tokens are
ranked by the class token's attention to them in that block (softmax of ``q_cls k^T /
sqrt(d_head)``, averaged over heads); the top ``ceil(keep * n)`` of the ``n`` patch
tokens stay and, with ``merge``, the others are condensed into one token, their mean
weighted by that attention (EViT's fused token; it is ranked with the patches at the next
condensation). The class token always stays; pooling (``cls``, ``mean`` or ``map``) runs
on what is left. ``keep = 1`` is the unmodified tower, bit for bit (the blocks are then
the tower's own calls).

What is here is TCA's token condensation by class attention. Its reservoir of domain
anchor tokens, collected from earlier test images to guide the condensation and to
correct the logits, is not: it makes a prediction depend on the order of the test
stream, which the harness's per-image evaluation (and save/load) does not model.

FLOPs are counted analytically (:func:`block_flops`) from the token count entering every
block and the layer widths: a multiply-add is 2 FLOPs; per block of ``n`` tokens, width
``w`` and MLP width ``h``: the q/k/v and output projections ``8 n w^2``, scores and
weighted values ``4 n^2 w``, the MLP ``4 n w h``, plus ``2 n w`` for the class-attention
row read at a condensation. The patch embedding and the projection are the same for
every ``keep`` and are left out; norms, softmax and GELU are lower-order and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.adapt.base import Method, Params, Shots, Tensors, register
from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.ranges import fraction, integers

CHUNK = 128  # images per condensed forward when scoring an ImageSet


@dataclass
class TCAOptions:
    keep: float = option(0.7, "share of patch tokens kept at each condensation (1 = none)",
                         check=fraction)  # fmt: skip
    start: int = option(1, "first block after which tokens are condensed (0-based)",
                        check=integers(0, 1024))  # fmt: skip
    merge: bool = option(True, "condense the dropped tokens into one attention-weighted token")


def block_flops(n: int, width: int, hidden: int, cls_row: bool = False) -> int:
    """FLOPs of one pre-LN block on ``n`` tokens (see the module docstring)."""
    return (
        8 * n * width**2
        + 4 * n**2 * width
        + 4 * n * width * hidden
        + (2 * n * width if cls_row else 0)
    )


def condensed_counts(n_patches: int, layers: int, keep: float, start: int, merge: bool,
                     class_token: bool = True) -> list[int]:  # fmt: skip
    """Tokens entering each block: the class token plus the patches (and the fused token)
    left by the condensations after blocks ``start .. layers - 2``."""
    counts, patches, fused = [], n_patches, 0
    for i in range(layers):
        counts.append(int(class_token) + patches + fused)
        if keep < 1 and start <= i < layers - 1:
            ranked = patches + fused
            kept = max(1, math.ceil(keep * ranked))
            patches, fused = kept, int(merge and kept < ranked)
    return counts


def tower_flops(cfg: Any, keep: float, start: int, merge: bool) -> int:
    """FLOPs of the vision tower's blocks on one image at ``keep`` (see the docstring)."""
    v = cfg.vision
    grid = v.image_size // v.patch_size
    counts = condensed_counts(grid * grid, v.layers, keep, start, merge, v.class_token)
    hidden = int(v.width * v.mlp_ratio)
    return sum(
        block_flops(n, v.width, hidden, cls_row=keep < 1 and start <= i < v.layers - 1)
        for i, n in enumerate(counts)
    )


def _block_with_class_attention(blk: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``blk(x)`` and the class token's attention to every token ``[B, T]`` (head mean)."""
    a = blk.attn
    b, t, d = x.shape
    q, k, v = a.qkv(blk.norm1(x)).view(b, t, 3, a.heads, d // a.heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)
    x = x + a.proj(y.transpose(1, 2).reshape(b, t, d))
    x = x + blk.mlp(blk.norm2(x))
    row = (q[:, :, :1] @ k.transpose(-1, -2) * (d // a.heads) ** -0.5).softmax(dim=-1)
    return x, row.mean(dim=1)[:, 0]


def condense(x: torch.Tensor, attn: torch.Tensor, keep: float, merge: bool) -> torch.Tensor:
    """The class token, the top ``ceil(keep * n)`` of the ``n`` other tokens by ``attn``
    (in their order) and, with ``merge``, the rest as one attention-weighted mean."""
    cls, rest, w = x[:, :1], x[:, 1:], attn[:, 1:]
    n = rest.shape[1]
    kept = max(1, math.ceil(keep * n))
    order = w.argsort(dim=1, descending=True)
    top = order[:, :kept].sort(dim=1).values
    parts = [cls, rest.gather(1, top[..., None].expand(-1, -1, rest.shape[2]))]
    if merge and kept < n:
        drop = order[:, kept:]
        wd = w.gather(1, drop)
        xd = rest.gather(1, drop[..., None].expand(-1, -1, rest.shape[2]))
        parts.append((wd[..., None] * xd).sum(dim=1, keepdim=True) / wd.sum(dim=1)[:, None, None])
    return torch.cat(parts, dim=1)


def encode_condensed(model: Any, images: torch.Tensor, keep: float, start: int,
                     merge: bool) -> torch.Tensor:  # fmt: skip
    """Normalised image features of pixel batch ``images`` with condensed tokens."""
    vis = model.visual
    cfg = vis.cfg
    if cfg.pool == "grid" or not cfg.class_token or cfg.bilinear:
        raise ClipforgeError(
            "tca ranks tokens by the class token's attention and pools what is left: the "
            f"vision tower needs a class token and cls, mean or map pooling without a "
            f"bilinear term (pool={cfg.pool}, class_token={cfg.class_token}, "
            f"bilinear={cfg.bilinear})"
        )
    images = images.to(model.logit_scale.dtype)
    # The tower's own steps (VisionTransformer.forward), so keep = 1 is the same numbers:
    # its input, the blocks, and for class-token pooling a last block run for that token.
    x = vis.norm_pre(vis._embed(images))
    blocks = vis.transformer.blocks
    early = vis.pools_early()
    for i, blk in enumerate(blocks):
        if keep < 1 and start <= i < len(blocks) - 1:
            x, attn = _block_with_class_attention(blk, x)
            x = condense(x, attn, keep, merge)
        elif early and i == len(blocks) - 1:
            return F.normalize(vis.pool_class_row(blk(x, at=vis.class_rows(x))), dim=-1)
        else:
            x = blk(x)
    x = x if cfg.pool == "mean" else vis.norm_post(x)
    return F.normalize(vis._pool(x), dim=-1)


def _pixels(images: Any, embedder: Any) -> Any:
    """Batches of pixels of an ``ImageSet`` (through the embedder's transform) or a batch."""
    if isinstance(images, torch.Tensor):
        yield images
        return
    for s in range(0, len(images), CHUNK):
        end = min(s + CHUNK, len(images))
        yield torch.stack([embedder.transform(images.load(i)) for i in range(s, end)])


def tca_features(p: Params, images: Any, embedder: Any) -> torch.Tensor:
    model = embedder.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = [encode_condensed(model, x.to(device), p["keep"], p["start"], p["merge"]).float()
               .cpu() for x in _pixels(images, embedder)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)


def tca_logits(t: Tensors, p: Params, images: Any, embedder: Any) -> torch.Tensor:
    return p["scale"] * tca_features(p, images, embedder) @ t["text"].T


def fit(shots: Shots, o: TCAOptions) -> tuple[Tensors, Params]:
    emb = shots.embedder
    if emb is None:
        raise ClipforgeError(
            "tca needs the model's vision tower (fit it through clipforge.adapt.fit)"
        )
    cfg = emb.model.cfg
    if o.start >= cfg.vision.layers:
        raise ClipforgeError(
            f"tca start={o.start}: the vision tower has {cfg.vision.layers} blocks (0-based)"
        )
    full = tower_flops(cfg, 1.0, o.start, o.merge)
    flops = tower_flops(cfg, o.keep, o.start, o.merge)
    params = {"keep": o.keep, "start": o.start, "merge": o.merge, "scale": shots.scale,
              "gflops": round(flops / 1e9, 6), "gflops_full": round(full / 1e9, 6),
              "selection": "options (training-free; the shots are not used)"}  # fmt: skip
    return {"text": shots.text}, params


register(
    "tca",
    Method(
        "TCA: training-free token condensation by class-token attention in the vision tower "
        "(keep ratio), zero-shot scores; GFLOPs in the sidecar",
        fit, tca_logits, TCAOptions, "Wang et al. 2024, TCA", needs_images=True,
    ),
)  # fmt: skip
