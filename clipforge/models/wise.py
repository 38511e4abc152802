"""Weight-space ensembling of a zero-shot and a fine-tuned model (WiSE-FT).

``theta(alpha) = (1 - alpha) theta_zero_shot + alpha theta_fine_tuned`` (Wortsman et al.,
2022): between the endpoints the ensemble keeps much of the zero-shot model's robustness
while gaining most of the fine-tune's in-domain accuracy. Written as that weighted sum,
not as ``zs + alpha (ft - zs)``, so alpha 0 and 1 give the endpoints bit for bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.loading import differing_tensors, same_head


def _mix(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    return {
        k: (1 - alpha) * a[k].to(v.dtype) + alpha * v if v.is_floating_point() else v.clone()
        for k, v in b.items()
    }


def interpolate(
    zero_shot: CLIP, fine_tuned: CLIP, alpha: float, *, drop_heads: bool = False
) -> CLIP:
    """A new model with the weights ``(1 - alpha) zero_shot + alpha fine_tuned``.

    The two must share an architecture (refused in one line otherwise); integer buffers
    (batch-norm step counts) and the architecture are the fine-tuned model's. Heads
    (``model.heads``: a caption decoder) are ensembled the same way when both models have
    them alike; a head only one has, or one of another shape or vocabulary, is refused
    unless ``drop_heads`` leaves the heads out.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ClipforgeError(f"--alpha: must be a number in [0, 1], got {alpha}")
    a, b = zero_shot.state_dict(), fine_tuned.state_dict()
    bad = differing_tensors(a, b)
    if bad:
        raise ClipforgeError(
            f"the models have different architectures ({len(bad)} tensors differ, e.g. {bad[0]})"
        )
    if zero_shot.tokenizer_spec != fine_tuned.tokenizer_spec:
        raise ClipforgeError(
            "the models tokenize texts differently (their checkpoints ship other tokenizers); "
            "their weights do not mix"
        )
    heads = {} if drop_heads else _mixed_heads(zero_shot.heads, fine_tuned.heads, alpha)
    with torch.device("meta"):
        out = CLIP(
            fine_tuned.cfg, init_logit_bias=0.0 if fine_tuned.logit_bias is not None else None
        )
    out.load_state_dict(_mix(a, b, alpha), assign=True)
    out.heads.update(heads)
    out.tokenizer_spec = fine_tuned.tokenizer_spec
    return out.eval()


def _mixed_heads(
    zs: dict[str, nn.Module], ft: dict[str, nn.Module], alpha: float
) -> dict[str, nn.Module]:
    if set(zs) != set(ft):
        only = sorted(set(zs) ^ set(ft))
        raise ClipforgeError(
            f"only one of the models has a {', '.join(only)} head; pass --drop-heads to "
            "ensemble the towers alone"
        )
    out = {}
    for name, head in ft.items():
        if not same_head(zs[name], head):
            raise ClipforgeError(
                f"the models' {name} heads differ in architecture or vocabulary; pass "
                "--drop-heads to ensemble the towers alone"
            )
        mixed = copy.deepcopy(head)
        mixed.load_state_dict(_mix(zs[name].state_dict(), head.state_dict(), alpha))
        out[name] = mixed.eval()
    return out
