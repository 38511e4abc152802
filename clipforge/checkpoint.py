"""The checkpoint file format: written atomically, read without running pickled code.

A clipforge checkpoint is a ``torch.save`` dict. Every one holds the model
(:func:`model_payload`: ``model`` weights and the plain ``model_config`` dict); a training
checkpoint (``RUN/checkpoints/last.pt``) adds the optimizer, RNG and stream positions
(:mod:`clipforge.train.state`). This module sits below models and training, so every
layer that reads or writes checkpoints uses the same three functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipforge.config import to_dict
from clipforge.errors import ClipforgeError


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve(path: str | Path, what: str = "checkpoint") -> Path:
    """The checkpoint a path names: a run folder's ``final.pt`` (else ``last.pt``), or the path.

    Errors name ``what`` the path was given for (``--teacher``, ``--init``, ...).
    """
    p = Path(path)
    if not p.exists():
        raise ClipforgeError(f"{what} not found: {p}")
    if not p.is_dir():
        return p
    for name in ("final.pt", "last.pt"):
        if (p / "checkpoints" / name).is_file():
            return p / "checkpoints" / name
    if (p / "checkpoints").is_dir() or (p / "config.yaml").is_file():
        raise ClipforgeError(f"{what}: no checkpoint in {p} (expected checkpoints/final.pt)")
    return p  # a folder of peer weights (OpenCLIP, Hugging Face)


def load(path: str | Path) -> dict[str, Any]:
    """Load a clipforge checkpoint with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ClipforgeError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors carry no file name; add it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipforgeError(f"cannot load checkpoint {path}: {first}") from None


def plain_config(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON types (tuples become lists), as YAML and
    ``weights_only`` pickles accept it."""
    return json.loads(json.dumps(to_dict(cfg)))


def model_payload(state_dict: Mapping[str, torch.Tensor], model_config: Any) -> dict[str, Any]:
    """The part of every checkpoint that makes it loadable as a model: the weights and
    the architecture (a :class:`~clipforge.models.ModelConfig`)."""
    return {"model": dict(state_dict), "model_config": plain_config(model_config)}
