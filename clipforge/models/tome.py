"""Token merging at inference (ToMe: Bolya et al., "Token Merging: Your ViT but Faster", 2023).

After the attention of every image block, ``r`` pairs of similar tokens are merged into
one by bipartite soft matching: the patch tokens are split alternately into sets A and
B, each A token finds its most similar B token (cosine of the attention keys, averaged
over heads), and the ``r`` A tokens with the closest matches are averaged into them.
A merged token remembers how many patches it stands for (its *size*): merges are
size-weighted means, attention adds ``log size`` to its keys' logits (proportional
attention, so a merged token draws the attention of the tokens it replaced) and mean
pooling weighs by size. The class token is never merged.

A model option at inference only: ``model.visual.merge_tokens = r`` (``clipforge eval
--merge-tokens r``); training and ``r = 0`` run the plain blocks. The token count after
each block is :func:`token_schedule`; :func:`vision_gflops` counts the blocks' work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.config import VisionConfig
from clipforge.models.transformer import Transformer


def merges(n_tokens: int, r: int, protected: int) -> int:
    """How many tokens one block merges: ``r``, at most half of the mergeable ones (set
    A has ``ceil(n / 2)`` of them, and every merge needs a distinct A token)."""
    return min(r, (n_tokens - protected) // 2)


def token_schedule(n_tokens: int, layers: int, r: int, protected: int) -> list[int]:
    """Tokens after each of ``layers`` blocks, starting from ``n_tokens`` (``protected``
    of them, the class token, never merged)."""
    counts, n = [], n_tokens
    for _ in range(layers):
        n -= merges(n, r, protected)
        counts.append(n)
    return counts


def bipartite_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` ``[B, N, W]`` by bipartite soft matching on ``metric``
    ``[B, N, C]``; ``size`` ``[B, N, 1]`` counts the patches behind each token. The first
    ``protected`` tokens stay as they are, first. Returns the merged tokens and sizes."""
    r = merges(x.shape[1], r, protected)
    if r <= 0:
        return x, size
    keep_x, body_x = x[:, :protected], x[:, protected:]
    keep_s, body_s = size[:, :protected], size[:, protected:]
    m = F.normalize(metric[:, protected:], dim=-1)
    scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
    best, match = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    src, kept = order[:, :r], order[:, r:]  # A tokens merged away / A tokens kept
    dst = match.gather(1, src)
    w = body_x.shape[-1]
    weighted = body_x * body_s  # sums of patches, divided by the summed sizes below
    a_x, b_x = weighted[:, ::2], weighted[:, 1::2]
    a_s, b_s = body_s[:, ::2], body_s[:, 1::2]
    b_x = b_x.scatter_add(
        1, dst[..., None].expand(-1, -1, w), a_x.gather(1, src[..., None].expand(-1, -1, w))
    )
    b_s = b_s.scatter_add(1, dst[..., None], a_s.gather(1, src[..., None]))
    a_x = a_x.gather(1, kept[..., None].expand(-1, -1, w))
    a_s = a_s.gather(1, kept[..., None])
    merged_s = torch.cat([a_s, b_s], dim=1)
    merged_x = torch.cat([a_x, b_x], dim=1) / merged_s
    return torch.cat([keep_x, merged_x], dim=1), torch.cat([keep_s, merged_s], dim=1)


def merged_forward(
    transformer: Transformer, x: torch.Tensor, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``transformer``'s blocks on ``x`` merging ``r`` tokens after each attention;
    the final tokens and their sizes ``[B, N', 1]``."""
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    for blk in transformer.blocks:
        attn = blk.attn
        h = blk.norm1(x)
        b, t, d = h.shape
        q, k, v = attn.qkv(h).view(b, t, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
        # Proportional attention: a token of size s counts as s keys.
        bias = size.log().transpose(1, 2)[:, None].to(q.dtype)  # [B, 1, 1, t]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + attn.proj(y.transpose(1, 2).reshape(b, t, d))
        x, size = bipartite_merge(x, k.mean(dim=1), size, r, protected)
        x = x + blk.mlp(blk.norm2(x))
    return x, size


def set_merging(model: nn.Module, r: int) -> None:
    """Merge ``r`` tokens after each image block of ``model`` at inference (0: off)."""
    if r < 0:
        raise ClipforgeError(f"--merge-tokens {r}: expected an integer >= 0")
    if r and model.visual.cfg.pool == "grid":
        raise ClipforgeError("--merge-tokens cannot be used with vision.pool=grid")
    model.visual.merge_tokens = r


def vision_gflops(cfg: VisionConfig, r: int = 0) -> float:
    """Multiply-adds x 2 of the image tower's transformer blocks for one image, in GFLOPs.

    Per block on ``n`` tokens of width ``w``: q/k/v and output projections ``4 n w^2``,
    attention scores and their weighted sum ``2 n^2 w``, both at the block's input
    count; the MLP ``2 mlp_ratio n' w^2`` at the count after the merge. The stem,
    pooling and head are the same for every ``r`` and left out.
    """
    w = cfg.width
    protected = int(cfg.class_token)
    n = (cfg.image_size // cfg.patch_size) ** 2 + protected
    macs = 0.0
    for after in token_schedule(n, cfg.layers, r, protected):
        macs += 4 * n * w * w + 2 * n * n * w + 2 * cfg.mlp_ratio * after * w * w
        n = after
    return 2 * macs / 1e9


__all__ = [
    "bipartite_merge",
    "merged_forward",
    "merges",
    "set_merging",
    "token_schedule",
    "vision_gflops",
]
