"""What ``--resume`` may change, and what it says about it.

A resumed run continues the computation its folder records: the saved ``config.yaml``
and the state in ``checkpoints/last.pt``. Of the fields given with ``--resume`` (flags,
or a ``--config`` file), one equal to the saved value changes nothing and is fine. Three
may differ:

* ``steps`` moves the end of the run: a run is extended (a finished one too) or ended
  earlier, but not before the step it has reached. The learning rate is a function of
  ``(step, steps)``, so from the saved step on it follows the cosine schedule of the new
  total (:func:`schedule_notice` says so, with the jump); the steps already taken keep
  the old one. The resumed run is therefore bit-identical to an uninterrupted run of the
  new length only when every step taken lies in the warm-up, where the two schedules
  agree. The new total is recorded in ``config.yaml``.
* ``progress`` and ``dist_backend`` change how the run is shown and how processes talk,
  not what it computes.

Any other difference would make the continued run a different run (another learning
rate, seed, worker count or data order than its first part had), so it is refused in
one line naming the flags; such a change is a new run, e.g. ``--init RUN``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipforge.config import from_dict, to_dict
from clipforge.errors import ClipforgeError
from clipforge.ranges import flag_name
from clipforge.train.config import TrainConfig
from clipforge.train.optim import cosine_lr

CHANGEABLE = ("steps", "progress", "dist_backend")


def resumed_config(
    saved: TrainConfig,
    changes: Mapping[str, Any],
    invocation: TrainConfig,
    run: Path,
    step: int,
) -> TrainConfig:
    """The config a resumed run continues with: ``saved`` with the ``changes`` it allows.

    ``changes`` are the fields this invocation gave (command-line flags and a
    ``--config`` file, as text or YAML values, sections by any alias); ``invocation``
    supplies ``progress`` and ``dist_backend`` when they are not among them (the library
    call ``train(cfg, resume=RUN)``); ``step`` is where ``last.pt`` stands.
    """
    changes = dict(changes)
    out = changes.pop("out", None)
    if out is not None and Path(str(out)).resolve() != run.resolve():
        raise ClipforgeError(f"--out {out}: a resumed run stays in its folder {run}")
    base = to_dict(saved)
    for name, value in list(changes.items()):
        # A section given as a mapping updates the saved one, it does not replace it.
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(saved, name, None)):
            changes[name] = {**base[name], **value}
    cfg = from_dict(TrainConfig, {**base, **changes}, f"--resume {run}")
    refused = [
        f"{flag} {new} (the run has {old})"
        for flag, old, new in _differences(saved, cfg)
        if flag not in {flag_name(n) for n in CHANGEABLE}
    ]
    if refused:
        allowed = ", ".join(flag_name(n) for n in CHANGEABLE)
        raise ClipforgeError(
            f"--resume {run}: {'; '.join(refused)}: a resumed run keeps its config, only "
            f"{allowed} can change (start a new run from its weights with --init {run})"
        )
    if cfg.steps < step:
        raise ClipforgeError(
            f"--steps {cfg.steps}: run {run} is already at step {step}; it can end there or later"
        )
    kept = {n: getattr(invocation, n) for n in ("progress", "dist_backend") if n not in changes}
    return dataclasses.replace(cfg, **kept)


def _differences(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(flag, value in ``a``, value in ``b``) for every field, sections included, that
    differs."""
    out: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            out += _differences(x, y)
        elif x != y:
            out.append((flag_name(f.name), x, y))
    return out


def schedule_notice(run: Path, saved_steps: int, cfg: TrainConfig, step: int) -> str | None:
    """One line on what a changed ``--steps`` does to the learning rate; None when
    ``--steps`` is unchanged."""
    if cfg.steps == saved_steps or step >= cfg.steps:
        return None
    new = cfg.lr * cosine_lr(step, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    old = cfg.lr * cosine_lr(min(step, saved_steps - 1), saved_steps, cfg.warmup, cfg.min_lr_ratio)
    before = "would give" if step < saved_steps else "ended at"
    return (
        f"resuming {run} at step {step} with --steps {cfg.steps} (was {saved_steps}): the "
        f"learning rate follows the {cfg.steps}-step cosine schedule from here, "
        f"{new:.3g} at step {step + 1} (the {saved_steps}-step schedule {before} {old:.3g})"
    )
