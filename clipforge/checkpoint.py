"""The checkpoint file format: written atomically, read without running pickled code.

A clipforge checkpoint is a ``torch.save`` dict. Every one holds the model
(:func:`model_payload`: ``model`` weights and the plain ``model_config`` dict); a training
checkpoint (``RUN/checkpoints/last.pt``) adds the optimizer, RNG and stream positions
(:mod:`clipforge.train.state`). This module sits below models and training, so every
layer that reads or writes checkpoints uses the same three functions.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipforge.config import to_dict
from clipforge.errors import ClipforgeError
from clipforge.outputs import atomic_file

# torch.save's legacy (pre-zip) format starts with this number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    with atomic_file(path) as f:
        torch.save(obj, f)


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.save`` file (its zip format or the legacy pickle)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    with open(path, "rb") as f:
        head = f.read(32)
    return head[:1] == b"\x80" and _LEGACY_MAGIC in head


def torch_load(path: str | Path) -> Any:
    """``torch.load(..., weights_only=True)`` of a ``torch.save`` file, on the CPU.

    Anything else (a plain pickle, random bytes, an unrelated zip) is refused in one line
    naming the file before torch sees it: torch would print warnings about pickle
    protocols and fail on an opcode number that tells a user nothing.
    """
    path = Path(path)
    if not is_torch_file(path):
        raise ClipforgeError(
            f"{path} is not a checkpoint clipforge reads (not a torch.save, TorchScript or "
            "safetensors file)"
        )
    with warnings.catch_warnings():
        # torch warns about pickle details of files it then loads fine.
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types here; all mean "not a safe checkpoint"
            raise ClipforgeError(load_error(path, e)) from None


def load_error(path: Path, e: Exception) -> str:
    """The one-line message for a ``torch.load(weights_only=True)`` failure on ``path``."""
    msg = str(e)
    bad = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(
        r"unsupported global[^\w]*([\w.]+)", msg, re.IGNORECASE
    )
    if bad:
        return (
            f"refusing to load {path}: its pickle imports {bad.group(1)}, which a weights-only "
            "load does not allow (loading it normally could run code)"
        )
    # torch wraps the reason in advice about weights_only=False, which is not ours to give.
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if not ln.startswith(boilerplate)), type(e).__name__)
    return f"cannot read {path} as a weights-only checkpoint: {detail}"


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
    state = torch_load(path)
    if not isinstance(state, dict):
        raise ClipforgeError(
            f"{path} is not a clipforge checkpoint (it holds a {type(state).__name__})"
        )
    return state


def plain_config(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON types (tuples become lists), as YAML and
    ``weights_only`` pickles accept it."""
    return json.loads(json.dumps(to_dict(cfg)))


def model_payload(
    state_dict: Mapping[str, torch.Tensor], model_config: Any, tokenizer: Any = None
) -> dict[str, Any]:
    """The part of every checkpoint that makes it loadable as a model: the weights, the
    architecture (a :class:`~clipforge.models.ModelConfig`) and, when it is not CLIP's
    BPE, the text tokenizer (a :class:`~clipforge.data.hf_tokenizers.TokenizerSpec`)."""
    out = {"model": dict(state_dict), "model_config": plain_config(model_config)}
    if tokenizer is not None:
        out["tokenizer"] = tokenizer.to_payload()
    return out


def heads_payload(
    heads: Mapping[str, Any], states: Mapping[str, Mapping[str, torch.Tensor]] | None = None
) -> dict[str, Any]:
    """The modules an objective trained beside the model (``Objective.heads()``: a caption
    decoder), each as its plain ``config`` and ``state``, under ``heads``; nothing when
    there are none, so checkpoints of plain runs stay as they were. ``states`` (by head
    name) replaces the modules' own weights: an average of them (``ema.pt``)."""
    if not heads:
        return {}
    return {
        "heads": {
            name: {"config": plain_config(m.cfg),
                   "state": {k: v.detach() for k, v in
                             (states[name] if states else m.state_dict()).items()}}
            for name, m in heads.items()
        }
    }  # fmt: skip
