"""From samples to batches: caption choice, hard negatives, augmentation, tokenizing."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from clipforge.data.sample import Sample, SampleError
from clipforge.data.tokenizer import Tokenizer
from clipforge.data.transforms import SeededCrop, crop_box, normalize

CAPTION_STRATEGIES = ("random", "first", "all")


@dataclass
class Item:
    """One augmented training sample (or the reason it was skipped).

    ``texts`` are the sample's positive captions (one, unless the caption strategy is
    ``all``); ``negatives`` are hard-negative captions that contradict the image.
    """

    position: int
    image: torch.Tensor | None = None  # uint8 [3, H, W]
    texts: list[str] = field(default_factory=list)
    weight: float = 1.0
    skip: str | None = None
    negatives: list[str] = field(default_factory=list)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # meta fields as tensors
    # With regions on: each object's box in the crop's [0, 1] coordinates and its phrase.
    regions: list[tuple[tuple[float, float, float, float], str]] | None = None

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass
class Batch:
    """``B`` images and ``T >= B`` texts.

    ``owner[j]`` is the image row of text ``j`` (``-1`` for a hard negative, which is a
    negative of every image); ``text_row[j]`` is the row whose sample produced text ``j``,
    hard negatives included, so a micro-batch can take its rows' texts. ``extra`` holds
    the ``Sample.meta`` fields the objective asked for (``Objective.batch_keys``: stored
    teacher embeddings, a third modality), stacked into one ``[B, ...]`` tensor each.
    """

    images: torch.Tensor  # float32, normalised
    tokens: torch.Tensor
    weights: torch.Tensor
    texts: list[str]
    next_position: int  # the first position not consumed by this or earlier batches
    skipped: dict[str, int] = field(default_factory=dict)
    owner: torch.Tensor | None = None  # None: one caption per image, no hard negatives
    text_row: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, sl: slice) -> Batch:
        """The sub-batch of image rows ``sl`` with their texts (rows renumbered from 0)."""
        per_image = {
            "images": self.images[sl],
            "weights": self.weights[sl],
            "extra": {k: v[sl] for k, v in self.extra.items()},
        }
        if self.owner is None or self.text_row is None:
            return replace(self, tokens=self.tokens[sl], texts=self.texts[sl], **per_image)
        start = sl.start or 0
        keep = (self.text_row >= start) & (self.text_row < sl.stop)
        idx = keep.nonzero().flatten()
        owner = self.owner[idx]
        return replace(
            self,
            tokens=self.tokens[idx],
            texts=[self.texts[i] for i in idx.tolist()],
            owner=torch.where(owner >= 0, owner - start, owner),
            text_row=self.text_row[idx] - start,
            **per_image,
        )


class SampleProcessor:
    """Augment one decoded sample and pick its captions, seeded by the sample's position.

    Caption strategies: ``random`` (one caption per visit, a different one each epoch),
    ``first`` (the first, canonical caption) and ``all`` (up to ``max_captions`` captions,
    all positives of the image). ``hard_negatives`` names perturbation kinds of
    :mod:`clipforge.data.shapes.hardneg`; a sample gets one negative caption per applicable kind,
    of the same template as its (first) chosen caption. Samples read from files may
    instead carry their own negatives in ``meta["hard_negatives"]`` (a list of strings).

    ``extra_keys`` names meta fields copied into ``Item.extra`` as tensors (numbers or
    lists of numbers, e.g. MobileCLIP-style ``teacher_image``/``teacher_text``
    embeddings stored with the data). A sample without one of them is skipped as
    ``missing_meta:KEY``.
    ``text_aug`` (e.g. :class:`clipforge.data.textaug.TextAugment`) perturbs each chosen
    caption with the sample's own generator, after the crop has drawn from it.
    ``regions`` > 0 (region-text objectives) carries up to that many objects of
    ``meta["objects"]`` (the shapes world's boxes, colours and shapes) into
    ``Item.regions``: each box moved with the crop, and its phrase ("a red circle"). An
    object with less than half of its box inside the crop is left out; a sample without
    ``objects`` is skipped as ``missing_meta:objects``.
    """

    def __init__(
        self,
        crop: SeededCrop,
        seed: int,
        caption: str = "random",
        max_chars: int = 2000,
        max_captions: int = 4,
        hard_negatives: tuple[str, ...] = (),
        extra_keys: tuple[str, ...] = (),
        text_aug: Callable[[str, random.Random], str] | None = None,
        regions: int = 0,
    ) -> None:
        if caption not in CAPTION_STRATEGIES:
            raise ValueError(f"unknown caption strategy {caption!r}")
        self.crop = crop
        self.seed = seed
        self.caption = caption
        self.max_chars = max_chars
        self.text_aug = text_aug
        self.max_captions = max_captions
        self.hard_negatives = tuple(hard_negatives)
        self.extra_keys = tuple(extra_keys)
        self.regions = regions

    def _regions(
        self, meta: dict, crop: tuple[int, int, int, int, bool]
    ) -> list[tuple[tuple[float, float, float, float], str]]:
        from clipforge.data.shapes import article

        out = []
        for o in meta["objects"]:
            x0, y0, x1, y1 = crop_box(o["box"], crop)
            area = (x1 - x0) * (y1 - y0)
            c = (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
            inside = max(c[2] - c[0], 0.0) * max(c[3] - c[1], 0.0)
            if area > 0 and inside >= area / 2 and len(out) < self.regions:
                out.append((c, f"{article(o['colour'])} {o['colour']} {o['shape']}"))
        return out

    def _choose(self, texts: list[str], rnd: random.Random) -> list[int]:
        if self.caption == "first":
            return [0]
        if self.caption == "random":
            return [rnd.randrange(len(texts))]
        if len(texts) <= self.max_captions:
            return list(range(len(texts)))
        return sorted(rnd.sample(range(len(texts)), self.max_captions))

    def _negatives(self, sample: Sample, caption: str, rnd: random.Random) -> list[str]:
        given = sample.meta.get("hard_negatives")
        if given:
            return [str(t)[: self.max_chars] for t in given if t and str(t).strip()]
        if not self.hard_negatives or "objects" not in sample.meta:
            return []
        from clipforge.data.shapes.hardneg import hard_negatives

        # Matched by text, so the negative perturbs the very template that was chosen.
        return list(hard_negatives(sample.meta, rnd, self.hard_negatives, caption).values())

    def __call__(self, position: int, sample: Sample | SampleError) -> Item:
        if isinstance(sample, SampleError):
            return Item(position, skip=sample.reason)
        texts = [t for t in sample.texts if t and t.strip()]
        if not texts:
            return Item(position, skip="empty_caption")
        extra: dict[str, torch.Tensor] = {}
        for key in self.extra_keys:
            if sample.meta.get(key) is None:
                return Item(position, skip=f"missing_meta:{key}")
            extra[key] = torch.as_tensor(sample.meta[key])
        if self.regions and not sample.meta.get("objects"):
            return Item(position, skip="missing_meta:objects")
        rnd = random.Random(self.seed * 1_000_003 + position)
        chosen = self._choose(texts, rnd)
        # A pathological caption must not stall the tokenizer; the context cuts it anyway.
        picked = [texts[i][: self.max_chars] for i in chosen]
        image, crop = self.crop.apply(sample.image, rnd)
        regions = self._regions(sample.meta, crop) if self.regions else None
        # After the crop, so that turning text augmentation on leaves the crops unchanged.
        if self.text_aug is not None:
            picked = [self.text_aug(t, rnd) for t in picked]
        weight = float(sample.meta.get("weight", 1.0))
        # Negatives draw from their own generator so turning them on leaves the crops and
        # caption choices of a run unchanged.
        neg_rnd = random.Random(self.seed * 1_000_003 + position + (1 << 40))
        negatives = self._negatives(sample, texts[chosen[0]], neg_rnd)
        return Item(position, image, picked, weight, negatives=negatives, extra=extra,
                    regions=regions)  # fmt: skip


# Keeps the noise draws apart from the crop (offset 0) and hard-negative (1 << 40) ones.
_NOISE_STREAM = 1 << 41


def noisy_positions(positions: list[int], p: float, seed: int) -> list[bool]:
    """Which samples get another sample's caption under ``--caption-noise p``.

    Each sample decides on its own, from a generator seeded by its position, so the
    choice does not depend on what else is in the batch and a resumed run repeats it.
    """
    if p <= 0:
        return [False] * len(positions)
    return [random.Random(seed * 1_000_003 + pos + _NOISE_STREAM).random() < p for pos in positions]


def swap_captions(items: list[Item], p: float, seed: int) -> list[Item]:
    """``items`` with a fraction ``p`` of their captions moved to other samples of the batch.

    The noisy samples (:func:`noisy_positions`) pass their captions round in a ring, so
    each gets the captions of the next noisy one and no caption is lost or duplicated: the
    corrupted-pairs setting of the noisy-correspondence papers. A lone noisy sample in a
    batch takes a copy of the captions of another sample drawn by its generator (nobody
    to swap with). Hard negatives stay with their image: they still contradict it.
    """
    flagged = [i for i, noisy in enumerate(noisy_positions([it.position for it in items], p, seed))
               if noisy]  # fmt: skip
    if not flagged or len(items) < 2:
        return items
    out = list(items)
    if len(flagged) == 1:
        (i,) = flagged
        rnd = random.Random(seed * 1_000_003 + items[i].position + _NOISE_STREAM)
        rnd.random()  # the draw that flagged it
        j = rnd.choice([k for k in range(len(items)) if k != i])
        out[i] = replace(items[i], texts=list(items[j].texts))
        return out
    for a, b in zip(flagged, flagged[1:] + flagged[:1], strict=True):
        out[a] = replace(items[a], texts=list(items[b].texts))
    return out


class Collator:
    """Items -> Batch: stack, normalise and tokenize once per batch (cheaper than per item).

    ``caption_noise`` > 0 corrupts that fraction of the pairs first (:func:`swap_captions`),
    seeded by ``seed`` and the samples' positions, for noisy-correspondence experiments.
    ``regions`` > 0 stacks the items' regions into ``extra``: ``region_boxes`` ``[B, K, 4]``,
    ``region_mask`` ``[B, K]`` (1: a region) and ``region_tokens`` ``[B, K, L]`` (the
    phrases, tokenized), ``K = regions``, empty slots zero.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        caption_noise: float = 0.0,
        seed: int = 0,
        regions: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.mean = mean
        self.std = std
        self.caption_noise = caption_noise
        self.seed = seed
        self.regions = regions

    def _region_extra(self, items: list[Item]) -> dict[str, torch.Tensor]:
        b, k = len(items), self.regions
        boxes, mask = torch.zeros(b, k, 4), torch.zeros(b, k)
        tokens = torch.zeros(b, k, self.tokenizer.context_length, dtype=torch.long)
        for i, it in enumerate(items):
            found = it.regions or []
            if not found:
                continue
            boxes[i, : len(found)] = torch.tensor([box for box, _ in found])
            mask[i, : len(found)] = 1.0
            tokens[i, : len(found)] = self.tokenizer([phrase for _, phrase in found])
        return {"region_boxes": boxes, "region_mask": mask, "region_tokens": tokens}

    def __call__(self, items: list[Item], next_position: int, skipped: dict[str, int]) -> Batch:
        items = swap_captions(items, self.caption_noise, self.seed)
        images = normalize(torch.stack([it.image for it in items]), self.mean, self.std)  # type: ignore[misc]
        weights = torch.tensor([it.weight for it in items])
        extra = {k: torch.stack([it.extra[k] for it in items]) for k in items[0].extra}
        if self.regions:
            extra.update(self._region_extra(items))
        if all(len(it.texts) == 1 and not it.negatives for it in items):
            texts = [it.texts[0] for it in items]
            return Batch(
                images, self.tokenizer(texts), weights, texts, next_position, skipped, extra=extra
            )
        texts, owner, text_row = [], [], []
        for row, it in enumerate(items):
            texts += it.texts
            owner += [row] * len(it.texts)
            text_row += [row] * len(it.texts)
        # Hard negatives after all positives: the first B columns stay the familiar diagonal
        # when every image has one caption. A negative that is some other image's caption
        # ("a small blue square" made from "a small blue circle") would be a false
        # negative for that image, and a repeated one would count twice: both are dropped.
        seen = set(texts)
        for row, it in enumerate(items):
            for neg in it.negatives:
                if neg not in seen:
                    seen.add(neg)
                    texts.append(neg)
                    owner.append(-1)
                    text_row.append(row)
        return Batch(
            images,
            self.tokenizer(texts),
            weights,
            texts,
            next_position,
            skipped,
            torch.tensor(owner),
            torch.tensor(text_row),
            extra,
        )
