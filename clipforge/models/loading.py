"""The one way to get a model from disk: :func:`load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipforge.checkpoint import resolve
from clipforge.models.clip import CLIP
from clipforge.models.config import ModelConfig
from clipforge.models.convert import model_from_state_dict, read_checkpoint


def load(
    path_or_run: str | Path,
    arch: str | ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    what: str = "model",
) -> CLIP:
    """A :class:`CLIP` (fp32, eval mode) from a run folder or any checkpoint clipforge reads.

    A run folder gives its ``checkpoints/final.pt`` (else ``last.pt``); a file or folder
    of weights may be clipforge's, OpenAI's, OpenCLIP's or Hugging Face's (CLIP or SigLIP).
    ``arch`` (a preset name or a :class:`ModelConfig`) replaces the architecture the file
    states or implies; ``overrides`` (dotted keys, e.g. ``{"act": "gelu"}``) adjust it.
    Errors name ``what`` the path was given as (``--init``, ``distillation teacher``, ...).
    """
    ckpt = read_checkpoint(resolve(path_or_run, what), arch, overrides)
    return model_from_state_dict(ckpt.config, ckpt.state_dict)
