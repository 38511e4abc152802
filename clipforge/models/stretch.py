"""Long-CLIP's knowledge-preserved stretching of the text position embeddings.

The first ``keep`` positions, which short captions were trained on and use most, are
kept as they are; the rest are stretched over the new context by linear interpolation
(Zhang et al., 2024): with ``keep`` 20, 77 positions become 20 + 57 x 4 = 248. Position
``keep + r i`` of the stretched table is old position ``keep + i`` exactly (``r`` the
stretch ratio); those between are interpolated, and past the last old position the last
step is extended linearly. The model then fine-tunes on long captions.
"""

from __future__ import annotations

import torch

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP


def stretch_positions(model: CLIP, context: int, keep: int) -> CLIP:
    """A copy of ``model`` whose text tower takes ``context`` tokens."""
    if model.text.pos_embed is None:
        raise ClipforgeError(
            "this model has rotary text positions (text.pos=rope): it needs no stretching, "
            "its text tower takes any context"
        )
    old = model.text.pos_embed.detach()
    n = old.shape[0]
    if not 0 < keep < n:
        raise ClipforgeError(
            f"--keep {keep}: must be between 1 and {n - 1} (the model's context is {n})"
        )
    if context <= n:
        raise ClipforgeError(f"--context {context}: must exceed the model's context {n}")
    ratio = (context - keep) / (n - keep)
    # Old (fractional) position of every stretched one beyond `keep`.
    where = keep + torch.arange(context - keep, dtype=torch.float64) / ratio
    low = where.floor().long().clamp(max=n - 2)
    frac = (where - low).to(old.dtype)[:, None]
    tail = old[low] + frac * (old[low + 1] - old[low])
    # Positions that land on an old one take it as it is, not through the rounding above.
    exact = where == where.floor()
    tail[exact] = old[where[exact].long()]
    table = torch.cat([old[:keep], tail])
    cfg = model.cfg.with_overrides({"text.context_length": context})
    with torch.device("meta"):
        out = CLIP(cfg, init_logit_bias=0.0 if model.logit_bias is not None else None)
    state = dict(model.state_dict())
    state["text.pos_embed"] = table.contiguous()
    out.load_state_dict(state, assign=True)
    # A caption decoder reads image tokens and has its own positions: it stays as it is.
    out.heads.update(model.heads)
    out.tokenizer_spec = model.tokenizer_spec  # the same vocabulary, rows of the new length
    return out.eval()
