"""``comclip``: training-free compositional matching of an image and captions by their parts
(ComCLIP, Jiang et al. 2023, "ComCLIP: Training-Free Compositional Image and Text
Matching").

A caption is split into its entity phrases (:func:`caption_parts`: at relation words,
"and" and commas, so "a red circle left of a blue square" gives "a red circle" and "a
blue square"); the image into crops of its objects, from boxes (the shapes world knows
them; users pass a JSON list, one list of ``[x0, y0, x1, y1]`` pixel boxes per image, in
the data's image order). Each phrase is grounded in the crop it matches best, and the
caption's score adds the mean of those matches to the global one:

    score(I, c) = cos(I, c) + weight * mean_{p in parts(c)} max_k cos(crop_k(I), p)

so a caption whose attributes are bound to the wrong objects ("a blue circle left of a
red square" for a red circle and a blue square) loses on the parts even when the global
embedding, a bag of its words, cannot tell the two apart. ComCLIP composes the crops'
embeddings into the image's before the global match; here the parts' matches are added
to the global score, which keeps each term readable. Where an option of a row has no
parts, or its image no boxes, the row is scored globally only, so every option of a row
is scored alike.

This is not a few-shot classifier, so it has no entry in the adaptation registry
(:data:`clipforge.adapt.METHODS`): :func:`evaluate_choice` scores a
:class:`~clipforge.eval.datasets.ChoiceData` set (the evaluator's compositional task) with
and without the parts, and ``clipforge adapt compose`` runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.eval.choice import choice_accuracy
from clipforge.eval.datasets import ChoiceData, ImageSet
from clipforge.ranges import non_negative, probability

Box = tuple[float, float, float, float]
# Where a caption of objects splits into its entities: relations, conjunctions, lists.
SPLIT = re.compile(r"\s+(?:left of|right of|above|below|next to|on top of|under|and|with)\s+|,\s*")


@dataclass
class ComCLIPOptions:
    weight: float = option(1.0, "weight of the parts' score beside the global one",
                           check=non_negative)  # fmt: skip
    pad: float = option(0.1, "margin added around each box, as a share of its side",
                        check=probability)  # fmt: skip


def caption_parts(caption: str) -> list[str]:
    """The entity phrases of ``caption``: split at relation words, "and", "with" and commas,
    after a leading "N shapes:" list header. ``[]`` when nothing splits off (one entity
    is the global caption itself)."""
    body = caption.split(":", 1)[1] if ":" in caption else caption
    parts = [p.strip() for p in SPLIT.split(body.strip()) if p and p.strip()]
    return parts if len(parts) > 1 else []


def combined_scores(
    global_cos: torch.Tensor, part_cos: Sequence[torch.Tensor], weight: float
) -> torch.Tensor:
    """``global_cos [O]`` plus ``weight`` times, per option, the mean over its parts of the
    best crop match (``part_cos[o]``: ``[P_o, K]`` cosines of its parts to the ``K``
    crops); global only when an option has no parts or there are no crops."""
    if not part_cos or any(p.numel() == 0 for p in part_cos):
        return global_cos
    parts = torch.stack([p.max(dim=1).values.mean() for p in part_cos])
    return global_cos + weight * parts


def crop(image: Image.Image, box: Box, pad: float) -> Image.Image:
    """``box`` with a margin of ``pad`` times its side, clipped to the image."""
    x0, y0, x1, y1 = box
    mx, my = pad * (x1 - x0), pad * (y1 - y0)
    w, h = image.size
    return image.crop((max(0, int(x0 - mx)), max(0, int(y0 - my)),
                       min(w, int(round(x1 + mx))), min(h, int(round(y1 + my)))))  # fmt: skip


def read_boxes(path: str | os.PathLike[str], n_images: int) -> list[list[Box]]:
    """A boxes JSON file: a list of ``n_images`` lists of ``[x0, y0, x1, y1]``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: not a boxes JSON file ({e})") from None
    if not isinstance(doc, list) or len(doc) != n_images:
        got = len(doc) if isinstance(doc, list) else type(doc).__name__
        raise ClipforgeError(f"{path}: expected a list of {n_images} box lists, got {got}")
    out = []
    for i, boxes in enumerate(doc):
        try:
            row = [tuple(float(v) for v in b) for b in boxes]
        except (TypeError, ValueError):
            raise ClipforgeError(f"{path}: image {i}: boxes must be [x0, y0, x1, y1]") from None
        if any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in row):
            raise ClipforgeError(f"{path}: image {i}: a box is not [x0, y0, x1, y1], x1 > x0")
        out.append(row)
    return out


def shapes_boxes(world: Any, n: int) -> list[list[Box]]:
    """The object boxes of the first ``n`` scenes of a shapes world."""
    return [[o.box for o in world.scene(i).objects] for i in range(n)]


def _crop_set(images: ImageSet, boxes: list[list[Box]], pad: float) -> tuple[ImageSet, list]:
    flat = [(i, b) for i, row in enumerate(boxes) for b in row]
    digest = hashlib.sha1(json.dumps([flat, pad]).encode()).hexdigest()[:16]
    return ImageSet(f"{images.key}:crops:{digest}", len(flat),
                    lambda j: crop(images.load(flat[j][0]), flat[j][1], pad)), flat  # fmt: skip


def comclip_scores(
    embedder: Any, data: ChoiceData, boxes: list[list[Box]], o: ComCLIPOptions
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per row, the global cosine of every option (plain CLIP, as
    :func:`clipforge.eval.choice.choice_scores`) and its combined score."""
    if len(boxes) != len(data.images):
        raise ClipforgeError(f"{len(boxes)} box lists for {len(data.images)} images")
    img = embedder.images(data.images)
    crops, flat = _crop_set(data.images, boxes, o.pad)
    crop_feats = embedder.images(crops, desc="embed crops")
    owner = torch.tensor([i for i, _ in flat], dtype=torch.long)
    phrases = sorted({p for opts in data.options for c in opts for p in caption_parts(c)})
    ptxt = embedder.texts(phrases) if phrases else torch.zeros(0, img.shape[1])
    where = {p: k for k, p in enumerate(phrases)}
    flat_opts = [t for opts in data.options for t in opts]
    txt = embedder.texts(flat_opts)
    plain, combined, start = [], [], 0
    for i, opts in zip(data.image_index, data.options, strict=True):
        g = txt[start : start + len(opts)] @ img[i]
        start += len(opts)
        mine = crop_feats[owner == i]
        parts = [ptxt[[where[p] for p in caption_parts(c)]] @ mine.T for c in opts]
        plain.append(g)
        combined.append(combined_scores(g, parts if len(mine) else [], o.weight))
    return plain, combined


def evaluate_choice(embedder: Any, data: ChoiceData, boxes: list[list[Box]],
                    o: ComCLIPOptions | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Accuracy (overall and per group) of plain CLIP and of ComCLIP's matching on ``data``."""
    plain, combined = comclip_scores(embedder, data, boxes, o or ComCLIPOptions())
    return {
        "clip": choice_accuracy(plain, data.answer, data.group),
        "comclip": choice_accuracy(combined, data.answer, data.group),
    }
