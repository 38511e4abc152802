"""Checkpoints: written atomically, loaded without unpickling arbitrary objects."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def run_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
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


def rng_state() -> dict[str, Any]:
    # Stored as plain tensors/lists so weights_only loading accepts them.
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
