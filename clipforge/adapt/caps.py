"""``caps``: CapS-Adapter's multimodal support set (Wang et al. 2024, "CapS-Adapter:
Caption-based MultiModal Adapter in Zero-Shot Classification"), training-free.

The support set holds every shot's image feature ``F [N, D]`` and the feature of its
caption ``G [N, D]`` (the data's own captions: an image folder's ``captions.jsonl`` or
``.txt`` sidecars, see :func:`clipforge.eval.datasets.image_folder`), with one-hot labels
``L [N, C]``. A query ``x`` is scored by zero-shot plus two caches, one per modality:

    scale * x T^T + alpha * exp(-beta (1 - x F^T)) L + gamma * exp(-beta_t (1 - x G^T)) L

The image cache is Tip-Adapter's; the caption cache is its cross-modal twin, the query
image matched against the support captions. Image-to-text cosines sit far below
image-to-image ones and spread less (the modality gap), so the caption affinities are
centred on the query's mean cosine to the support captions, ``exp(-beta_t (m - x G^T))``,
and get their own sharpness ``beta_t``. ``alpha``, ``beta``, ``gamma`` and ``beta_t`` are
chosen on the validation shots with the caches built from the other shots, then rebuilt
from all shots; at one shot per class they are the option defaults. ``gamma = 0`` is
Tip-Adapter, and the grid lists it first, so a tie keeps the captions out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register, select
from clipforge.adapt.tip import ALPHAS, BETAS, cache_logits, one_hot
from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.ranges import non_negative

GAMMAS = (0.0, 0.3, 1.0, 3.0)
TEXT_BETAS = (5.0, 20.0, 50.0)


@dataclass
class CapsOptions:
    alpha: float = option(1.0, "image cache weight without a validation split",
                          check=non_negative)  # fmt: skip
    beta: float = option(5.5, "image affinity sharpness without a validation split",
                         check=non_negative)  # fmt: skip
    gamma: float = option(1.0, "caption cache weight without a validation split",
                          check=non_negative)  # fmt: skip
    beta_t: float = option(20.0, "caption affinity sharpness without a validation split",
                           check=non_negative)  # fmt: skip


def caption_cache_logits(
    captions: torch.Tensor, values: torch.Tensor, x: torch.Tensor, beta_t: float
) -> torch.Tensor:
    """``exp(-beta_t (m - x G^T)) L``, ``m`` each query's mean cosine to the captions."""
    cos = x @ captions.T
    return torch.exp(-beta_t * (cos.mean(dim=1, keepdim=True) - cos)) @ values


def caps_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    zs = p["scale"] * x @ t["text"].T
    img = cache_logits(t["keys"], t["values"], x, p["beta"])
    cap = caption_cache_logits(t["captions"], t["values"], x, p["beta_t"])
    return zs + p["alpha"] * img + p["gamma"] * cap


def fit(shots: Shots, o: CapsOptions) -> tuple[Tensors, Params]:
    if shots.captions is None:
        raise ClipforgeError(
            'caps needs a caption per training image: a captions.jsonl ({"image": '
            '"<class>/<file>", "caption": ...} lines) or <file>.txt sidecars in the folder'
        )
    if shots.embedder is None:
        raise ClipforgeError(
            "caps needs the model's text tower (fit it through clipforge.adapt.fit)"
        )
    g = shots.embedder.texts(shots.captions, desc="embed captions")
    hp = {"alpha": o.alpha, "beta": o.beta, "gamma": o.gamma, "beta_t": o.beta_t}
    table = None
    if shots.has_val:
        xt, yt = shots.part("train")
        xv, yv = shots.part("val")
        t = {"text": shots.text, "keys": xt, "values": one_hot(yt, shots.num_classes),
             "captions": g[shots.train]}  # fmt: skip
        grid = [{"alpha": a, "beta": b, "gamma": c, "beta_t": bt}
                for c in GAMMAS for a in ALPHAS for b in BETAS for bt in TEXT_BETAS]  # fmt: skip
        hp, table = select(
            grid, lambda p: accuracy(caps_logits(t, {"scale": shots.scale, **p}, xv), yv)
        )
    x, y = shots.part("all")
    tensors = {"text": shots.text, "keys": x.clone(), "values": one_hot(y, shots.num_classes),
               "captions": g.clone()}  # fmt: skip
    return tensors, chosen(shots, {**hp, "scale": shots.scale}, table)


register(
    "caps",
    Method(
        "CapS-Adapter: image and caption caches of the shots (the data's captions) blended "
        "with zero-shot; training-free",
        fit, caps_logits, CapsOptions, "Wang et al. 2024, CapS-Adapter",
        needs_captions=True,
    ),
)  # fmt: skip
