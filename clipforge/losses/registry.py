"""The objective registry: each objective module registers itself and its options here.

An objective's options are a dataclass declared beside it; the run config gathers every
registered objective's options into one section (:func:`loss_options_class`), so a new
objective with options is one module and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipforge.losses.base import Objective
from clipforge.registry import Registry


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and the temperature/bias its paper initialises with.

    ``make(options, run)`` returns the objective module: ``options`` is an instance of the
    objective's ``options`` dataclass (None when it has none) and ``run`` the run's
    ``TrainConfig`` (for run-wide fields: seed, hard negatives, captions, model).
    ``contrastive`` is False for regularisers (uniformity, alignment, RaFA) that only make
    sense added to a contrastive loss; a loss expression takes its temperature and bias
    from its first contrastive term.
    """

    make: Callable[[Any, Any], Objective]
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    summary: str = ""
    contrastive: bool = True
    options: type | None = None

    def build(self, run: Any) -> Objective:
        """The objective for a run config (or any object with the option attributes)."""
        return self.make(options_of(self.options, run), run)


def options_of(cls: type | None, run: Any) -> Any:
    """``cls`` filled from ``run.loss_options`` (or from ``run``'s own attributes, for
    partial configs); fields the source lacks keep their defaults."""
    if cls is None:
        return None
    source = getattr(run, "loss_options", None) or run
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls)
              if hasattr(source, f.name)}  # fmt: skip
    return cls(**values)


LOSSES: Registry[LossSpec] = Registry("loss")


def register(name: str, spec: LossSpec) -> None:
    """Register an objective under ``name`` (called by the module that defines it)."""
    if spec.options is not None:
        taken = {f.name: n for n, s in _with_options() for f in dataclasses.fields(s.options)}
        for f in dataclasses.fields(spec.options):
            if f.name in taken:
                raise ValueError(f"loss option {f.name!r} of {name!r} is {taken[f.name]!r}'s")
    LOSSES.add(name, spec)


def _with_options() -> list[tuple[str, LossSpec]]:
    return [(n, s) for n in LOSSES.names() if (s := LOSSES.get(n)).options is not None]


def loss_options_class() -> type:
    """One dataclass holding every registered objective's options: the run config's
    ``loss`` section (flags ``--loss.NAME``, and ``--name`` as an alias)."""
    specs: list[tuple[str, Any, Any]] = []
    for _, spec in _with_options():
        hints = typing.get_type_hints(spec.options)
        for f in dataclasses.fields(spec.options):  # type: ignore[arg-type]
            specs.append((f.name, hints[f.name], dataclasses.field(default=f.default,
                                                                  metadata=f.metadata)))  # fmt: skip
    cls = dataclasses.make_dataclass("LossOptions", specs)
    cls.__module__ = __name__
    return cls
