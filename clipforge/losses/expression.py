"""Weighted sums of registered objectives: ``--loss clip+0.1*uniformity+0.1*alignment``."""

from __future__ import annotations

import re

import torch
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective
from clipforge.ranges import non_negative

_TERM = re.compile(r"^(?:(?P<weight>[^*]+)\*)?(?P<name>[A-Za-z_][\w-]*)$")


def is_expression(text: str) -> bool:
    """Whether ``text`` is more than one bare loss name."""
    return "+" in text or "*" in text


def parse_expression(text: str) -> list[tuple[float, str]]:
    """``"clip+0.1*uniformity"`` -> ``[(1.0, "clip"), (0.1, "uniformity")]``.

    Terms are separated by ``+``; each is ``NAME`` or ``WEIGHT*NAME`` with a float weight.
    Names are not checked here (the registry's error lists the known ones).

    A weight is a finite number >= 0. Every registered term is a loss to minimise, so a
    negative weight would maximise it: a contrastive term is unbounded above (positive
    pairs pushed apart without end) and a regulariser turned round (``-uniformity``:
    collapse) is a failure mode, not a method. A zero weight is allowed: the term is
    computed and logged as ``loss/NAME`` without training the model, a way to watch a
    measure during a run; at least one weight must be positive.
    """
    terms: list[tuple[float, str]] = []
    for raw in text.split("+"):
        part = raw.replace(" ", "")
        m = _TERM.match(part)
        if not part or m is None:
            raise ClipforgeError(
                f"loss expression {text!r}: cannot read term {raw.strip()!r} "
                "(expected NAME or WEIGHT*NAME, e.g. clip+0.1*uniformity)"
            )
        weight = 1.0
        if m["weight"] is not None:
            try:
                weight = float(m["weight"])
            except ValueError:
                raise ClipforgeError(
                    f"loss expression {text!r}: weight {m['weight']!r} is not a number"
                ) from None
        if not non_negative.accepts(weight):
            raise ClipforgeError(
                f"--loss {text!r}: the weight of {m['name']!r} must be "
                f"{non_negative.describe()}, got {m['weight']}"
            )
        if any(m["name"] == name for _, name in terms):
            raise ClipforgeError(f"loss expression {text!r}: {m['name']!r} appears twice")
        terms.append((weight, m["name"]))
    if not any(w > 0 for w, _ in terms):
        raise ClipforgeError(f"--loss {text!r}: at least one weight must be positive")
    return terms


class SumObjective(Objective):
    """``sum_k w_k L_k``; each term keeps its own options, parameters and hooks.

    The value of every term in the last ``forward`` is reported by :meth:`metrics`, so a
    run logs e.g. ``loss/uniformity`` beside the total.
    """

    def __init__(self, terms: list[tuple[float, str, Objective]]) -> None:
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.terms = nn.ModuleList([obj for _, _, obj in terms])
        self.batch_keys = tuple(dict.fromkeys(k for obj in self.terms for k in obj.batch_keys))
        self.needs_tokens = any(obj.needs_tokens for obj in self.terms)
        self.regions = max(obj.regions for obj in self.terms)
        self.needs_negative_rows = any(obj.needs_negative_rows for obj in self.terms)
        self._last: dict[str, float] = {}

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for obj in self.terms:
            out.update(obj.prepare(images, tokens))
        return out

    def attach(self, model: nn.Module) -> None:
        for obj in self.terms:
            obj.attach(model)

    def after_step(self, model: nn.Module) -> None:
        for obj in self.terms:
            obj.after_step(model)

    def heads(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for obj in self.terms:
            out.update(obj.heads())
        return out

    def forward(self, f: Features) -> torch.Tensor:
        total: torch.Tensor | None = None
        self._last = {}
        for w, name, obj in zip(self.weights, self.names, self.terms, strict=True):
            value = obj(f)
            self._last[f"loss/{name}"] = float(value.detach())
            total = w * value if total is None else total + w * value
        assert total is not None  # parse_expression never returns an empty list
        return total

    def metrics(self) -> dict[str, float]:
        out = dict(self._last)
        for obj in self.terms:
            out.update(obj.metrics())
        return out
