"""From a data source to training batches, deterministically from any position.

Data flows one way: source -> decode -> augment -> tokenize -> batch. Every sample
position of the stream has its own seed (for augmentation and caption choice), so the
batches depend only on ``(seed, position)``: not on the number of workers and not on
whether the run was interrupted. The trainer checkpoints the position of the next
unconsumed sample and restarts the stream there.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.data.sample import Sample, SampleError, SkipCounter
from clipforge.data.shapes import ShapesWorld
from clipforge.data.tokenizer import Tokenizer
from clipforge.data.transforms import SeededCrop, normalize
from clipforge.errors import ClipforgeError


class Source:
    """A stream of samples addressed by position; one item per position, forever.

    ``get(position)`` returns a :class:`Sample` or raises :class:`SampleError`. Finite data
    sets wrap around in epochs, each with its own permutation.
    """

    random_access = True

    def get(self, position: int) -> Sample:
        raise NotImplementedError

    def iter_from(self, start: int, step: int = 1) -> Iterator[Sample | SampleError]:
        pos = start
        while True:
            try:
                yield self.get(pos)
            except SampleError as e:
                yield e
            pos += step

    def __len__(self) -> int:
        raise NotImplementedError


class ShapesSource(Source):
    """The shapes world as an infinite stream."""

    def __init__(self, world: ShapesWorld) -> None:
        self.world = world

    def get(self, position: int) -> Sample:
        return self.world.sample(position)

    def __len__(self) -> int:
        return 2**62


class IndexedSource(Source):
    """A finite random-access data set (a manifest), reshuffled every epoch."""

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _index(self, position: int) -> int:
        n = len(self.dataset)
        epoch, i = divmod(position, n)
        if not self.shuffle:
            return i
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return int(self._perm[1][i])

    def get(self, position: int) -> Sample:
        return self.dataset.load(self._index(position))


class SequentialSource(Source):
    """Tar shards, read in order; a restart skips the members before ``start`` undecoded."""

    random_access = False

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._n: int | None = None

    def __len__(self) -> int:
        if self._n is None:
            self._n = self.dataset.count_samples()
        return self._n

    def iter_from(self, start: int, step: int = 1) -> Iterator[Sample | SampleError]:
        if step != 1:
            raise ValueError("tar shards are read by one process; use workers=0")
        n = len(self)
        if n == 0:
            raise SampleError("empty_dataset", "no samples in the shards")
        offset = start % n
        while True:
            yield from self.dataset.iter_samples(start=offset)
            offset = 0


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
        if self.owner is None or self.text_row is None:
            texts = self.texts[sl]
            return replace(
                self,
                images=self.images[sl],
                tokens=self.tokens[sl],
                weights=self.weights[sl],
                texts=texts,
                extra={k: v[sl] for k, v in self.extra.items()},
            )
        start = sl.start or 0
        keep = (self.text_row >= start) & (self.text_row < sl.stop)
        idx = keep.nonzero().flatten()
        owner = self.owner[idx]
        return replace(
            self,
            images=self.images[sl],
            tokens=self.tokens[idx],
            weights=self.weights[sl],
            texts=[self.texts[i] for i in idx.tolist()],
            owner=torch.where(owner >= 0, owner - start, owner),
            text_row=self.text_row[idx] - start,
            extra={k: v[sl] for k, v in self.extra.items()},
        )


class SampleProcessor:
    """Augment one decoded sample and pick its captions, seeded by the sample's position.

    Caption strategies: ``random`` (one caption per visit, a different one each epoch),
    ``first`` (the first, canonical caption) and ``all`` (up to ``max_captions`` captions,
    all positives of the image). ``hard_negatives`` names perturbation kinds of
    :mod:`clipforge.data.hardneg`; a sample gets one negative caption per applicable kind,
    of the same template as its (first) chosen caption. Samples read from files may
    instead carry their own negatives in ``meta["hard_negatives"]`` (a list of strings).

    ``extra_keys`` names meta fields copied into ``Item.extra`` as tensors (numbers or
    lists of numbers, e.g. MobileCLIP-style ``teacher_image``/``teacher_text``
    embeddings stored with the data). A sample without one of them is skipped as
    ``missing_meta:KEY``.
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
    ) -> None:
        if caption not in CAPTION_STRATEGIES:
            raise ValueError(f"unknown caption strategy {caption!r}")
        self.crop = crop
        self.seed = seed
        self.caption = caption
        self.max_chars = max_chars
        self.max_captions = max_captions
        self.hard_negatives = tuple(hard_negatives)
        self.extra_keys = tuple(extra_keys)

    def _choose(self, texts: list[str], rnd: random.Random) -> list[int]:
        if self.caption == "first":
            return [0]
        if self.caption == "random":
            return [rnd.randrange(len(texts))]
        if len(texts) <= self.max_captions:
            return list(range(len(texts)))
        return sorted(rnd.sample(range(len(texts)), self.max_captions))

    def _negatives(self, sample: Sample, template: int, rnd: random.Random) -> list[str]:
        given = sample.meta.get("hard_negatives")
        if given:
            return [str(t)[: self.max_chars] for t in given if t and str(t).strip()]
        if not self.hard_negatives or "objects" not in sample.meta:
            return []
        from clipforge.data.hardneg import hard_negatives

        return list(hard_negatives(sample.meta, rnd, self.hard_negatives, template).values())

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
        rnd = random.Random(self.seed * 1_000_003 + position)
        chosen = self._choose(texts, rnd)
        # A pathological caption must not stall the tokenizer; the context cuts it anyway.
        picked = [texts[i][: self.max_chars] for i in chosen]
        image = self.crop(sample.image, rnd)
        weight = float(sample.meta.get("weight", 1.0))
        # Negatives draw from their own generator so turning them on leaves the crops and
        # caption choices of a run unchanged.
        neg_rnd = random.Random(self.seed * 1_000_003 + position + (1 << 40))
        negatives = self._negatives(sample, chosen[0], neg_rnd)
        return Item(position, image, picked, weight, negatives=negatives, extra=extra)


class Collator:
    """Items -> Batch: stack, normalise and tokenize once per batch (cheaper than per item)."""

    def __init__(
        self, tokenizer: Tokenizer, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.tokenizer = tokenizer
        self.mean = mean
        self.std = std

    def __call__(self, items: list[Item], next_position: int, skipped: dict[str, int]) -> Batch:
        images = normalize(torch.stack([it.image for it in items]), self.mean, self.std)  # type: ignore[misc]
        weights = torch.tensor([it.weight for it in items])
        extra = {k: torch.stack([it.extra[k] for it in items]) for k in items[0].extra}
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


class _ItemStream(IterableDataset):
    def __init__(self, source: Source, processor: SampleProcessor, start: int) -> None:
        self.source = source
        self.processor = processor
        self.start = start

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        # Worker w serves positions start+w, start+w+nw, ...; the loader takes one item
        # from each worker in turn, so the main process sees positions in order.
        pos = self.start + wid
        for item in self.source.iter_from(pos, nw):
            try:
                yield self.processor(pos, item)
            except Exception as e:  # a sample that breaks decoding/augmentation is skipped
                yield Item(pos, skip=f"transform_error:{type(e).__name__}")
            pos += nw


def iter_batches(
    source: Source,
    processor: SampleProcessor,
    collate: Collator,
    batch_size: int,
    start: int = 0,
    workers: int = 0,
    max_consecutive_skips: int = 10_000,
) -> Iterator[Batch]:
    """Batches of ``batch_size`` valid samples from ``start`` on, skipping and counting bad ones."""
    if workers and not source.random_access:
        workers = 0
    stream = _ItemStream(source, processor, start)
    items: Iterator[Item]
    if workers:
        loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=64)
        items = iter(loader)
    else:
        items = iter(stream)
    skipped = SkipCounter()
    run_of_skips = 0
    pending: list[Item] = []
    for item in items:
        if item.skip is not None:
            skipped.add(item.skip)
            run_of_skips += 1
            if run_of_skips >= max_consecutive_skips:
                raise ClipforgeError(
                    f"{run_of_skips} samples in a row could not be used "
                    f"(last reason: {item.skip}); is the data set readable?"
                )
            continue
        run_of_skips = 0
        pending.append(item)
        if len(pending) == batch_size:
            yield collate(pending, item.position + 1, skipped.as_dict())
            pending = []
            skipped = SkipCounter()
