"""CLIP-family models: configs, presets and the dual encoder."""

from __future__ import annotations

import math
from typing import Any

from clipforge.models.clip import CLIP, CLIPOutput
from clipforge.models.config import (
    PRESETS,
    ModelConfig,
    TextConfig,
    VisionConfig,
    get_model_config,
)
from clipforge.models.convert import save_checkpoint
from clipforge.models.loading import load, tokenizer_for
from clipforge.models.preprocess import image_transform


def create_model(
    name: str = "tiny",
    overrides: dict[str, Any] | None = None,
    init_logit_scale: float = math.log(1 / 0.07),
    init_logit_bias: float | None = None,
) -> CLIP:
    """Build a randomly initialised model from the preset ``name`` (see ``list_models()``)."""
    return CLIP(get_model_config(name, overrides), init_logit_scale, init_logit_bias)


def list_models() -> list[str]:
    return PRESETS.names()


__all__ = [
    "CLIP",
    "CLIPOutput",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "create_model",
    "get_model_config",
    "image_transform",
    "list_models",
    "load",
    "save_checkpoint",
    "tokenizer_for",
]
