"""``gda``: Gaussian discriminant analysis on the shot features, ensembled with zero-shot
("A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", Wang et al. 2024).

Every class is a Gaussian with its own mean ``mu_c`` and one shared covariance ``S``
(pooled within-class scatter over ``N - 1``). Its precision is the paper's
shrinkage (empirical-Bayes ridge) estimate ``P = D ((N - 1) S + tr(S) I)^-1``, so it is
defined even with fewer shots than dimensions. With equal priors the posterior is linear:

    gda(x) = x W^T + b,   W = mu P,   b_c = log(1/C) - mu_c P mu_c^T / 2

and the adapter scores ``scale * x T^T + alpha * gda(x)``. Nothing is trained; ``alpha``
is chosen on the validation shots (0 included, which is zero-shot). At one shot per
class the scatter is zero and ``P`` falls back to ``D I`` (nearest class mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register, select
from clipforge.config import option
from clipforge.ranges import non_negative

ALPHAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class GDAOptions:
    alpha: float = option(
        1.0, "weight of the GDA logits when there is no validation split", check=non_negative
    )


def gda_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> Tensors:
    """Weights ``[C, D]`` and bias ``[C]`` of the shared-covariance Gaussian classifier."""
    x = x.double()
    n, d = x.shape
    mus = torch.stack([x[y == c].mean(dim=0) for c in range(num_classes)])
    centred = x - mus[y]
    cov = centred.T @ centred / max(n - 1, 1)
    ridge = float(cov.trace())
    if ridge <= 0:  # one shot per class: no scatter at all
        prec = d * torch.eye(d, dtype=x.dtype)
    else:
        prec = d * torch.linalg.inv((n - 1) * cov + ridge * torch.eye(d, dtype=x.dtype))
    w = mus @ prec
    b = torch.log(torch.tensor(1.0 / num_classes, dtype=x.dtype)) - 0.5 * (w * mus).sum(dim=1)
    return {"weight": w.float(), "bias": b.float()}


def gda_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    zs = p["scale"] * x @ t["text"].T
    return zs + p["alpha"] * (x @ t["weight"].T + t["bias"])


def fit(shots: Shots, o: GDAOptions) -> tuple[Tensors, Params]:
    k, alpha, table = shots.num_classes, o.alpha, None
    if shots.has_val:
        xt, yt = shots.part("train")
        xv, yv = shots.part("val")
        t = {"text": shots.text, **gda_classifier(xt, yt, k)}
        best, table = select(
            [{"alpha": a} for a in ALPHAS],
            lambda p: accuracy(gda_logits(t, {"scale": shots.scale, **p}, xv), yv),
        )
        alpha = best["alpha"]
    x, y = shots.part("all")
    tensors = {"text": shots.text, **gda_classifier(x, y, k)}
    return tensors, chosen(shots, {"alpha": alpha, "scale": shots.scale}, table)


register(
    "gda",
    Method(
        "class means + shared shrinkage covariance -> linear classifier, plus zero-shot; "
        "training-free", fit, gda_logits, GDAOptions,
        "Wang et al. 2024, A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
    ),
)  # fmt: skip
