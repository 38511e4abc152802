"""Held-out shapes-world benchmarks: colour x shape zero-shot and image-text retrieval."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torchvision.transforms import v2

from clipforge.data.shapes import COLOURS, SHAPES, ShapesWorld
from clipforge.data.tokenizer import Tokenizer
from clipforge.eval.retrieval import retrieval
from clipforge.eval.zeroshot import classifier_weights, zero_shot
from clipforge.models import CLIP


def _a(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


# Prompt templates: the class name is "<colour> <shape>".
TEMPLATES: list[Callable[[str], str]] = [
    lambda c: _a(f"a {c}"),
    lambda c: _a(f"a photo of a {c}"),
    lambda c: f"one {c}",
    lambda c: _a(f"there is a {c}"),
    lambda c: _a(f"a picture of a {c}"),
]


@dataclass
class ClassificationSet:
    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]


@dataclass
class RetrievalSet:
    images: torch.Tensor
    texts: list[str]
    positives: torch.Tensor  # [N_images, N_texts] bool


def _to_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    return v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )


@lru_cache(maxsize=8)
def classification_set(
    image_size: int, per_class: int, split: str, seed: int, mean: tuple, std: tuple
) -> ClassificationSet:
    """Single-object images of every colour x shape class (``per_class`` each)."""
    world = ShapesWorld(image_size, split=split, seed=seed)
    tf = _to_tensor(mean, std)
    images, labels, names = [], [], []
    for ci, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        names.append(f"{colour} {shape}")
        for j in range(per_class):
            s = world.object_sample(ci * per_class + j, shape, colour)
            images.append(tf(s.image))
            labels.append(ci)
    return ClassificationSet(torch.stack(images), torch.tensor(labels), names)


@lru_cache(maxsize=8)
def retrieval_set(
    image_size: int, n: int, split: str, seed: int, mean: tuple, std: tuple
) -> RetrievalSet:
    """``n`` held-out scenes, each with its canonical caption in the gallery.

    A gallery caption counts as correct for an image when its text equals any caption of
    that image, so identical captions of different images are all correct answers.
    """
    world = ShapesWorld(image_size, split=split, seed=seed)
    tf = _to_tensor(mean, std)
    samples = [world.sample(i) for i in range(n)]
    texts = [s.texts[0] for s in samples]
    index: dict[str, list[int]] = {}
    for j, t in enumerate(texts):
        index.setdefault(t, []).append(j)
    positives = torch.zeros(n, n, dtype=torch.bool)
    for i, s in enumerate(samples):
        for t in set(s.texts):
            for j in index.get(t, []):
                positives[i, j] = True
    return RetrievalSet(torch.stack([tf(s.image) for s in samples]), texts, positives)


@torch.no_grad()
def embed_images(model: CLIP, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [
        model.encode_image(images[i : i + batch_size].to(device), normalize=True).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(
    model: CLIP, tokenizer: Tokenizer, texts: list[str], batch_size: int = 256
) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [
        model.encode_text(tokenizer(texts[i : i + batch_size]).to(device), normalize=True)
        .float()
        .cpu()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def evaluate_shapes(
    model: CLIP,
    tokenizer: Tokenizer,
    split: str = "test",
    seed: int = 0,
    per_class: int = 25,
    pairs: int = 1000,
) -> dict[str, float]:
    """Zero-shot colour x shape classification and retrieval on a held-out split."""
    was_training = model.training
    model.eval()
    cfg = model.cfg
    size = cfg.vision.image_size
    out: dict[str, float] = {}
    cls = classification_set(size, per_class, split, seed, tuple(cfg.mean), tuple(cfg.std))
    weights = classifier_weights(model, tokenizer, cls.classnames, TEMPLATES)
    zs = zero_shot(embed_images(model, cls.images), cls.labels, weights)
    out.update({f"zeroshot/{k}": v for k, v in zs.items()})
    ret = retrieval_set(size, pairs, split, seed, tuple(cfg.mean), tuple(cfg.std))
    r = retrieval(
        embed_images(model, ret.images), embed_texts(model, tokenizer, ret.texts), ret.positives
    )
    out.update({f"retrieval/{k}": v for k, v in r.items()})
    model.train(was_training)
    return out
