"""Captioning: decode captions with a model's caption decoder and score them.

:class:`Captioner` turns images into captions (greedy or beam search) with the decoder a
``--loss clip+coca`` run trains (``model.heads["decoder"]``); ``clipforge caption`` is a
thin layer over it. The ``captioning`` task captions held-out shapes-world scenes and
checks the attributes of each generated caption against the scene's metadata:

* ``colour_recall`` / ``shape_recall``: the share of objects whose colour / shape the
  caption names;
* ``binding_recall``: the share of objects whose colour-shape pair the caption names as
  a pair ("red circle" in "a red circle and a blue square");
* ``binding_precision``: the share of colour-shape pairs in the captions that the scene
  holds;
* ``exact_match``: the share of captions whose set of colour-shape pairs is the scene's.

BLEU-1..4 and CIDEr against the scene's reference captions come from pycocoevalcap (the
COCO caption evaluation code) when it is installed (``pip install clipforge[caption]``);
captions are compared as lower-case words, which is what its Java tokenizer would give
for these captions, so no Java is needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from clipforge.data.shapes import (
    COLOURS,
    OOD_COLOURS,
    OOD_SHAPES,
    SHAPES,
    ShapesWorld,
    captions_for,
    plural,
)
from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval import shapes_data
from clipforge.eval.datasets import IMAGE_SUFFIXES, ImageSet
from clipforge.eval.embed import Embedder
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult
from clipforge.models import CLIP
from clipforge.models.generate import beam, greedy

DEFAULT_SCENES = 200  # decoding is sequential per token: fewer scenes than retrieval's 1000

_COLOURS = {*COLOURS, *OOD_COLOURS}
_SHAPE_OF = {w: s for s in (*SHAPES, *OOD_SHAPES) for w in (s, plural(s))}


class Captioner:
    """Captions of images from a model with a caption decoder (``model.heads["decoder"]``).

    ``beams`` 1 is greedy decoding; ``max_len`` caps the caption's tokens.
    """

    def __init__(
        self,
        model: CLIP,
        tokenizer: Tokenizer,
        embedder: Embedder | None = None,
        beams: int = 1,
        max_len: int = 30,
        batch_size: int = 64,
        what: str = "model",
    ) -> None:
        decoder = model.heads.get("decoder")
        if decoder is None:
            raise ClipforgeError(f"{what} has no caption decoder: train one with --loss clip+coca")
        self.decoder = decoder.to(next(model.parameters()).device).eval()
        self.tokenizer = tokenizer
        self.embedder = embedder or Embedder(model, tokenizer, progress=False)
        self.beams, self.max_len, self.batch_size = beams, max_len, batch_size

    def ids(self, images: Sequence[Image.Image]) -> list[list[int]]:
        """Tokenizer ids of each image's caption (no start or end token)."""
        out: list[list[int]] = []
        start, end = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        for i in range(0, len(images), self.batch_size):
            tokens = self.embedder.image_tokens(images[i : i + self.batch_size])
            with torch.inference_mode():
                if self.beams == 1:
                    out += greedy(self.decoder, tokens, start, end, self.max_len)
                else:
                    out += beam(self.decoder, tokens, start, end, self.beams, self.max_len)
        return out

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        """The caption of each image, as text."""
        return [self.tokenizer.decode([i for i in row if i >= 0]) for row in self.ids(images)]


def open_images(paths: Sequence[str | Path]) -> list[tuple[Path, Image.Image]]:
    """Image files, and the images of folders (sorted, not recursive), decoded as RGB;
    a missing or unreadable file is a one-line error naming it."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                           and f.is_file() and not f.name.startswith("."))  # fmt: skip
            if not found:
                raise ClipforgeError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ClipforgeError(f"image not found: {p}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append((f, im.convert("RGB")))
        except (OSError, ValueError) as e:
            raise ClipforgeError(f"cannot read image {f}: {e}") from None
    return out


def words(caption: str) -> list[str]:
    """Lower-case words of a caption, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def attribute_pairs(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: a colour word directly before a shape
    word, singular or plural (``"two red circles"`` -> ``{("red", "circle")}``)."""
    w = words(caption)
    return {(a, _SHAPE_OF[b]) for a, b in zip(w, w[1:], strict=False)
            if a in _COLOURS and b in _SHAPE_OF}  # fmt: skip


def attribute_scores(
    captions: Sequence[str], objects: Sequence[Sequence[tuple[str, str]]]
) -> dict[str, float]:
    """The attribute metrics of the module docstring; ``objects[i]`` lists image ``i``'s
    objects as (colour, shape)."""
    n_obj = colour = shape = bound = 0
    named = named_right = exact = 0
    for caption, objs in zip(captions, objects, strict=True):
        w = set(words(caption))
        shapes_named = {_SHAPE_OF[x] for x in w if x in _SHAPE_OF}
        pairs = attribute_pairs(caption)
        truth = set(objs)
        for c, s in objs:
            n_obj += 1
            colour += c in w
            shape += s in shapes_named
            bound += (c, s) in pairs
        named += len(pairs)
        named_right += len(pairs & truth)
        exact += pairs == truth
    return {
        "exact_match": exact / max(len(captions), 1),
        "binding_recall": bound / max(n_obj, 1),
        "binding_precision": named_right / named if named else 0.0,
        "colour_recall": colour / max(n_obj, 1),
        "shape_recall": shape / max(n_obj, 1),
    }


def text_scores(captions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr from pycocoevalcap; empty when it is not installed."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return {}
    gts = {i: [" ".join(words(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(words(c)) or "empty"] for i, c in enumerate(captions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu_{k + 1}": float(b) for k, b in enumerate(bleu)}, "cider": float(cider)}


@dataclass
class CaptionData:
    """Images with the (colour, shape) of their objects and reference captions."""

    name: str
    images: ImageSet
    objects: list[list[tuple[str, str]]]
    references: list[list[str]]


def _scene_loader(world: ShapesWorld, i: int) -> Image.Image:
    return world.sample(i).image


def shapes_captioning(
    size: int, seed: int = 0, n: int | None = None, split: str = "test"
) -> CaptionData:
    """``n`` scenes of ``split`` with their objects and captions as references."""
    n = n or DEFAULT_SCENES
    world = ShapesWorld(size, split=split, seed=seed)
    scenes = [world.scene(i) for i in range(n)]
    images = ImageSet(f"shapes:scenes:{size}:{seed}:{split}:{n}", n, partial(_scene_loader, world))
    objects = [[(o.colour, o.shape) for o in sc.objects] for sc in scenes]
    refs = [captions_for(sc) for sc in scenes]
    return CaptionData(f"shapes-{split}", images, objects, refs)


def run(ctx: EvalContext, data: CaptionData) -> TaskResult:
    captioner = Captioner(ctx.model, ctx.tokenizer, ctx.embedder)
    images = [data.images.load(i) for i in range(len(data.images))]
    captions = captioner(images)
    metrics = {**attribute_scores(captions, data.objects), **text_scores(captions, data.references)}
    details = {
        "examples": [{"caption": c, "reference": r[0]} for c, r in
                     zip(captions[:8], data.references[:8], strict=False)],
        "decoding": "greedy",
    }  # fmt: skip
    if "cider" not in metrics:
        details["bleu/cider"] = "skipped: pycocoevalcap is not installed"
    return TaskResult(metrics, details=details)


def _unavailable(ctx: EvalContext) -> str | None:
    if "decoder" in ctx.model.heads:
        return None
    return "the model has no caption decoder (train one with --loss clip+coca)"


def _shapes(ctx: EvalContext) -> CaptionData:
    n = min(ctx.scenes or shapes_data.SCENES, shapes_data.SCENES, DEFAULT_SCENES)
    return shapes_captioning(ctx.image_size, ctx.seed, n, ctx.split)


TASKS.add(
    "captioning",
    Task(
        "greedy captions of scenes: colour/shape/binding match against the metadata, BLEU, CIDEr",
        ("captioning",),
        _shapes,
        run,
        _unavailable,
    ),
)
