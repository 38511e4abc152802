"""Training state beside the model in ``last.pt``: optimizer, RNG states, stream positions.

The file format itself (atomic writes, safe loading, run folders, the model part) is
:mod:`clipforge.checkpoint`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from clipforge.checkpoint import heads_payload, model_payload


def training_state(
    model: nn.Module,
    model_config: Any,
    optimizer: torch.optim.Optimizer,
    objective: nn.Module,
    step: int,
    positions: list[int],
    skipped: dict[str, int],
    states: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What ``last.pt`` holds: the model, and everything a resumed run needs to continue
    bit for bit (``position`` is the sum of the ranks' stream ``positions``). ``states``
    are the model's and optimizer's full state dicts when they were gathered elsewhere
    (a sharded model, :mod:`clipforge.train.fsdp`)."""
    model_state, optimizer_state = states or (model.state_dict(), optimizer.state_dict())
    return {
        **model_payload(model_state, model_config, getattr(model, "tokenizer_spec", None)),
        **heads_payload(objective.heads() if hasattr(objective, "heads") else {}),
        "optimizer": optimizer_state,
        "objective": objective.state_dict(),
        "step": step,
        "position": sum(positions),
        "positions": list(positions),
        "skipped": dict(skipped),
        "rng": rng_state(),
    }


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as plain tensors and lists."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _py_state_to_plain(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_plain_to_py_state(state["python"]))


def _py_state_to_plain(s: tuple) -> list:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _plain_to_py_state(s: list) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
