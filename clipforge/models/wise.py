"""Weight-space ensembling of a zero-shot and a fine-tuned model (WiSE-FT).

``theta(alpha) = (1 - alpha) theta_zero_shot + alpha theta_fine_tuned`` (Wortsman et al.,
2022): between the endpoints the ensemble keeps much of the zero-shot model's robustness
while gaining most of the fine-tune's in-domain accuracy. Written as that weighted sum,
not as ``zs + alpha (ft - zs)``, so alpha 0 and 1 give the endpoints bit for bit.
"""

from __future__ import annotations

import torch

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.loading import differing_tensors


def interpolate(zero_shot: CLIP, fine_tuned: CLIP, alpha: float) -> CLIP:
    """A new model with the weights ``(1 - alpha) zero_shot + alpha fine_tuned``.

    The two must share an architecture (refused in one line otherwise); integer buffers
    (batch-norm step counts) and the architecture are the fine-tuned model's.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ClipforgeError(f"--alpha: must be a number in [0, 1], got {alpha}")
    a, b = zero_shot.state_dict(), fine_tuned.state_dict()
    bad = differing_tensors(a, b)
    if bad:
        raise ClipforgeError(
            f"the models have different architectures ({len(bad)} tensors differ, e.g. {bad[0]})"
        )
    mixed = {
        k: (1 - alpha) * a[k].to(v.dtype) + alpha * v if v.is_floating_point() else v.clone()
        for k, v in b.items()
    }
    with torch.device("meta"):
        out = CLIP(
            fine_tuned.cfg, init_logit_bias=0.0 if fine_tuned.logit_bias is not None else None
        )
    out.load_state_dict(mixed, assign=True)
    return out.eval()
