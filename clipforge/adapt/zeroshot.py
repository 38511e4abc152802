"""``zeroshot``: the text classifier, with template ensembling and optional per-class
descriptions.

With a descriptions file (JSON: class name -> list of phrases) every prompt of a class is
also written with each of its descriptions, ``"<template>, which has <description>"``,
and the class embedding is the normalised mean of all of them, as in "Grounding
Descriptions in Images informs Zero-Shot Visual Recognition" (a class without
descriptions keeps its plain prompts). Nothing is fitted on the shots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, register
from clipforge.config import option
from clipforge.errors import ClipforgeError


@dataclass
class ZeroShotOptions:
    descriptions: str | None = option(
        None, "JSON file: class name -> list of descriptions ('a photo of a {c}, which has {d}')"
    )


def read_descriptions(path: str | Path, classnames: Sequence[str]) -> dict[str, list[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipforgeError(f"descriptions file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(d, str) for d in v) for v in data.values()
    ):
        raise ClipforgeError(f"{path}: expected an object of class name -> list of strings")
    unknown = sorted(set(data) - set(classnames))
    if unknown:
        raise ClipforgeError(f"{path}: unknown class(es) {', '.join(unknown)}")
    return data


def described_prompts(
    classname: str, templates: Sequence[Any], descriptions: Sequence[str]
) -> list[str]:
    """The prompts of one class: each template, and each template with each description."""
    plain = [t(classname) if callable(t) else t.format(classname) for t in templates]
    return plain + [f"{p.rstrip('.')}, which has {d}" for p in plain for d in descriptions]


def text_classifier(
    embedder: Any, classnames: Sequence[str], templates: Sequence[Any],
    descriptions: dict[str, list[str]],
) -> torch.Tensor:  # fmt: skip
    """``[C, D]``: the normalised mean of the normalised embeddings of each class's prompts."""
    rows = []
    for c in classnames:
        e = embedder.texts(described_prompts(c, templates, descriptions.get(c, [])))
        rows.append(torch.nn.functional.normalize(e.mean(dim=0), dim=-1))
    return torch.stack(rows)


def zeroshot_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    return p["scale"] * x @ t["text"].T


def fit(shots: Shots, o: ZeroShotOptions) -> tuple[Tensors, Params]:
    text = shots.text
    params: Params = {"scale": shots.scale}
    if o.descriptions is not None:
        if shots.embedder is None:
            raise ClipforgeError("zeroshot descriptions need the model's text tower (an embedder)")
        desc = read_descriptions(o.descriptions, shots.classnames)
        text = text_classifier(shots.embedder, shots.classnames, shots.templates, desc)
        params["descriptions"] = sum(len(v) for v in desc.values())
    return {"text": text}, params


register(
    "zeroshot",
    Method(
        "text classifier from prompt templates (ensembled), optional per-class descriptions",
        fit, zeroshot_logits, ZeroShotOptions,
        "Radford et al. 2021; descriptions: Grounding Descriptions in Images (DesCo-style)",
    ),
)  # fmt: skip
