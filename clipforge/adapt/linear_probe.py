"""``linear_probe``: the evaluator's logistic-regression probe on the shot features.

The inverse regularisation ``C`` is chosen from the evaluator's grid on the validation
shots (ties to the strongest regularisation), then the probe is refitted on all shots.
At one shot per class ``C`` is the option default.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register, select
from clipforge.config import option
from clipforge.eval.linear_probe import C_GRID, fit_logistic
from clipforge.ranges import positive


@dataclass
class LinearProbeOptions:
    c: float = option(
        1.0, "inverse regularisation when there is no validation split", check=positive
    )


def probe_tensors(x: torch.Tensor, y: torch.Tensor, c: float, num_classes: int) -> Tensors:
    """Weights ``[C, D]`` and bias ``[C]`` of a logistic regression fitted on ``x, y``."""
    with warnings.catch_warnings():
        # At one shot per class sklearn suspects a regression target; it is not one.
        warnings.filterwarnings("ignore", message="The number of unique classes")
        m = fit_logistic(x.numpy(), y.numpy(), c)
    coef = torch.as_tensor(m.coef_, dtype=torch.float32)
    bias = torch.as_tensor(m.intercept_, dtype=torch.float32)
    if coef.shape[0] == 1:  # sklearn's binary form scores class 1 only: split it in halves
        coef, bias = torch.cat([-coef, coef]) / 2, torch.cat([-bias, bias]) / 2
    w = torch.zeros(num_classes, x.shape[1])
    b = torch.full((num_classes,), -1e4)  # a class absent from the shots is never chosen
    cls = torch.as_tensor(m.classes_)
    w[cls], b[cls] = coef, bias
    return {"weight": w, "bias": b}


def probe_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    return x @ t["weight"].T + t["bias"]


def fit(shots: Shots, o: LinearProbeOptions) -> tuple[Tensors, Params]:
    k = shots.num_classes
    table = None
    c = o.c
    if shots.has_val:
        xt, yt = shots.part("train")
        xv, yv = shots.part("val")
        best, table = select(
            [{"c": g} for g in C_GRID],
            lambda p: accuracy(probe_logits(probe_tensors(xt, yt, p["c"], k), {}, xv), yv),
        )
        c = best["c"]
    x, y = shots.part("all")
    return probe_tensors(x, y, c, k), chosen(shots, {"c": c}, table)


register(
    "linear_probe",
    Method(
        "logistic regression on the shot features (the evaluator's probe), C on validation",
        fit, probe_logits, LinearProbeOptions, "Radford et al. 2021",
    ),
)  # fmt: skip
