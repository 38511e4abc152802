"""From a data source to training batches, deterministically from any position.

Data flows one way: source -> decode -> augment -> tokenize -> batch. Every sample
position of the stream has its own seed (for augmentation and caption choice), so the
batches depend only on ``(seed, position)`` and, for tar shards, on the number of
streams (below): not on whether the run was interrupted. The trainer checkpoints the
position of the next unconsumed sample and restarts the stream there.

Ranks and workers. ``iter_batches(..., workers=W, rank=r, world_size=N)`` gives rank ``r``
its own stream; positions are counted per rank (a distributed trainer saves one position
per rank, since ranks skip different numbers of bad samples). Rank ``r``'s position ``p``
stands for the global sample index ``g = p * N + r``, which also seeds the sample's
augmentation, so with ``N = 1`` nothing changes. Over any stretch of positions the ranks
read disjoint samples:

* random-access sources (the shapes world, manifests, image folders) serve index ``g``
  directly, so the N ranks together read every index once per epoch; worker ``w`` of
  ``W`` serves the positions ``p`` with ``p - start = w (mod W)`` and the loader takes one
  item from each worker in turn, so positions arrive in order;
* tar shards (:class:`ShardStream`) are split at shard level into ``L = max(W, 1)``
  streams per rank, ``N * L`` in all; position ``p`` of rank ``r`` is item ``p // L`` of
  stream ``r * L + p % L``. Each epoch deals a fresh permutation of the shards out to the
  streams round-robin, so every sample is read once per epoch across all ranks and
  workers (each stream runs through its epochs at its own pace when shards differ in
  length). Changing ``W`` or ``N`` changes the shard order, so a resumed run must keep
  both, as the trainer does by reusing the saved config.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.data.readers import RawSample, ShardDataset
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

    def validate(self, streams: int) -> None:
        """Raise :class:`ClipforgeError` if the source cannot feed ``streams`` readers.

        Called in the main process before any worker starts, because an error raised
        inside a worker reaches the user wrapped in a worker traceback.
        """

    def stream(
        self, start: int, worker: int, workers: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, int, Sample | SampleError]]:
        """Yield ``(position, global index, item)`` for worker ``worker``'s share of rank
        ``rank``'s positions from ``start`` on (see the module docstring for the split)."""
        first = start + worker
        pos = first
        for item in self.iter_from(first * world_size + rank, workers * world_size):
            yield pos, pos * world_size + rank, item
            pos += workers


class ShapesSource(Source):
    """The shapes world as an infinite stream."""

    def __init__(self, world: ShapesWorld) -> None:
        self.world = world

    def get(self, position: int) -> Sample:
        return self.world.sample(position)

    def __len__(self) -> int:
        return 2**62


class IndexedSource(Source):
    """A finite random-access data set (a manifest, an image folder), reshuffled every epoch."""

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


class _ShuffleBuffer:
    """A seeded shuffle buffer with explicit state, so its output order can be replayed.

    Items fill the buffer until it holds ``size``; then each new item replaces a randomly
    chosen one, which is emitted; at the end the rest is emitted in random order. The
    order depends only on the number of items and the generator, so it can be computed on
    integer stand-ins without reading any data (what resuming does).
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.items: list = []

    def push(self, item: object) -> tuple[bool, object]:
        """Add ``item``; return ``(True, emitted)`` once the buffer is full, else ``(False, None)``."""
        if self.size == 0:
            return True, item
        if len(self.items) < self.size:
            self.items.append(item)
            return False, None
        j = self.rng.randrange(self.size)
        out, self.items[j] = self.items[j], item
        return True, out

    def pop(self) -> object:
        """Emit one random remaining item (the buffer must not be empty)."""
        j = self.rng.randrange(len(self.items))
        self.items[j], self.items[-1] = self.items[-1], self.items[j]
        return self.items.pop()


class ShardStream(Source):
    """Webdataset tar shards as shuffled streams, split at shard level (module docstring).

    Stream ``s`` of ``S`` reads, in epoch ``e``, the shards ``perm(seed, e)[s::S]`` one
    after another (with ``resample``, ``ceil(n_shards / S)`` shards drawn with
    replacement by ``(seed, e, s)`` instead), through a shuffle buffer of ``buffer``
    samples seeded by ``(seed, e, s, S)`` that is drained at the end of each epoch. The
    buffer holds encoded members; only emitted samples are decoded.

    Resume is exact at any sample position: the order of an epoch is a function of the
    shards' sample counts, which are read from the tar headers without the data, so the
    stream replays the buffer on integer stand-ins up to the position, then reads the
    members still in the buffer and goes on. The cost is a header walk of the epoch's
    shards, once per resume.
    """

    random_access = False

    def __init__(
        self, dataset: ShardDataset, seed: int = 0, buffer: int = 1000, resample: bool = False
    ) -> None:
        if buffer < 0:
            raise ClipforgeError(f"shuffle buffer must be >= 0, got {buffer}")
        self.dataset = dataset
        self.shards = dataset.shards
        self.seed = seed
        self.buffer = buffer
        self.resample = resample
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        """Items in one pass over all shards (header walk, cached)."""
        return sum(self._count(s) for s in self.shards)

    def _count(self, shard: str) -> int:
        if shard not in self._counts:
            self._counts[shard] = self.dataset.count_shard(shard)
        return self._counts[shard]

    def validate(self, streams: int) -> None:
        self.epoch_shards(0, 0, streams)

    def epoch_shards(self, epoch: int, stream: int, streams: int) -> list[str]:
        """The shards stream ``stream`` of ``streams`` reads in ``epoch``, in order."""
        n = len(self.shards)
        if self.resample:
            rng = np.random.default_rng([self.seed, epoch, stream, streams])
            picks = rng.integers(0, n, -(-n // streams))
            return [self.shards[int(i)] for i in picks]
        if n < streams:
            raise ClipforgeError(
                f"{n} shards cannot feed {streams} streams (ranks x data workers) with each "
                "sample once per epoch; write more, smaller shards or use --resample"
            )
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return [self.shards[int(i)] for i in order[stream::streams]]

    def _rng(self, epoch: int, stream: int, streams: int) -> random.Random:
        key = np.random.SeedSequence([self.seed, epoch, stream, streams]).generate_state(2)
        return random.Random(int(key[0]) << 32 | int(key[1]))

    def stream(
        self, start: int, worker: int, workers: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, int, Sample | SampleError]]:
        # One stream per worker: the worker that serves position start + worker serves
        # every workers-th position after it, which all belong to the same stream.
        first = start + worker
        lane = first % workers
        pos = first
        for item in self.iter_stream(rank * workers + lane, world_size * workers, first // workers):
            yield pos, pos * world_size + rank, item
            pos += workers

    def iter_from(self, start: int, step: int = 1) -> Iterator[Sample | SampleError]:
        if step != 1:
            raise ValueError("ShardStream splits by shards; use stream() for several readers")
        return self.iter_stream(0, 1, start)

    def iter_stream(
        self, stream: int, streams: int, start: int = 0
    ) -> Iterator[Sample | SampleError]:
        """Items of stream ``stream`` of ``streams`` from its ``start``-th item on, forever."""
        epoch, offset = 0, start
        if start:
            # Whole epochs before the start are skipped by their lengths (header counts).
            while True:
                n = sum(self._count(s) for s in self.epoch_shards(epoch, stream, streams))
                if offset < n or n == 0:
                    break
                offset -= n
                epoch += 1
        empty_epochs = 0
        while True:
            produced = 0
            for item in self._epoch(epoch, stream, streams, offset):
                produced += 1
                yield item
            empty_epochs = 0 if produced or offset else empty_epochs + 1
            if empty_epochs >= 3:
                raise ClipforgeError(
                    f"stream {stream} of {streams} read no samples in 3 epochs; are the shards empty?"
                )
            epoch, offset = epoch + 1, 0

    def _epoch(
        self, epoch: int, stream: int, streams: int, offset: int
    ) -> Iterator[Sample | SampleError]:
        shards = self.epoch_shards(epoch, stream, streams)
        buf = _ShuffleBuffer(self.buffer, self._rng(epoch, stream, streams))
        # Items are numbered across the epoch's shards; `resume_from` is the first one
        # not yet pushed into the buffer when the stream restarts at `offset`.
        held: dict[int, int] = {}  # item number -> slot in buf.items
        resume_from = 0
        if offset:
            total = sum(self._count(s) for s in shards)
            emitted = 0
            while emitted < offset and resume_from < total:
                full, _ = buf.push(resume_from)
                resume_from += 1
                emitted += full
            while emitted < offset and buf.items:
                buf.pop()
                emitted += 1
            held = {int(n): slot for slot, n in enumerate(buf.items)}  # type: ignore[call-overload]
        number = 0
        for shard in shards:
            base = number

            def want(i: int, base: int = base) -> bool:
                n = base + i
                return n >= resume_from or n in held

            for raw in self.dataset.read_shard(shard, want=want if offset else None):
                n, number = number, number + 1
                if n < resume_from:
                    if n in held:
                        buf.items[held[n]] = raw
                    continue
                full, out = buf.push(raw)
                if full:
                    yield self._decode(out)
        while buf.items:
            yield self._decode(buf.pop())

    def _decode(self, item: object) -> Sample | SampleError:
        if isinstance(item, RawSample):
            return self.dataset.decode(item)
        if isinstance(item, SampleError):
            return item
        # A held stand-in that the re-read never replaced: the shard changed on disk.
        return SampleError("shard_changed", f"item {item} not found on re-reading")


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
    :mod:`clipforge.data.hardneg`; a sample gets one negative caption per applicable kind,
    of the same template as its (first) chosen caption. Samples read from files may
    instead carry their own negatives in ``meta["hard_negatives"]`` (a list of strings).

    ``extra_keys`` names meta fields copied into ``Item.extra`` as tensors (numbers or
    lists of numbers, e.g. MobileCLIP-style ``teacher_image``/``teacher_text``
    embeddings stored with the data). A sample without one of them is skipped as
    ``missing_meta:KEY``.
    ``text_aug`` (e.g. :class:`clipforge.data.textaug.TextAugment`) perturbs each chosen
    caption with the sample's own generator, after the crop has drawn from it.
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
        from clipforge.data.hardneg import hard_negatives

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
        rnd = random.Random(self.seed * 1_000_003 + position)
        chosen = self._choose(texts, rnd)
        # A pathological caption must not stall the tokenizer; the context cuts it anyway.
        picked = [texts[i][: self.max_chars] for i in chosen]
        image = self.crop(sample.image, rnd)
        # After the crop, so that turning text augmentation on leaves the crops unchanged.
        if self.text_aug is not None:
            picked = [self.text_aug(t, rnd) for t in picked]
        weight = float(sample.meta.get("weight", 1.0))
        # Negatives draw from their own generator so turning them on leaves the crops and
        # caption choices of a run unchanged.
        neg_rnd = random.Random(self.seed * 1_000_003 + position + (1 << 40))
        negatives = self._negatives(sample, texts[chosen[0]], neg_rnd)
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
    def __init__(
        self,
        source: Source,
        processor: SampleProcessor,
        start: int,
        rank: int = 0,
        world_size: int = 1,
        streams: int = 1,
    ) -> None:
        self.source = source
        self.processor = processor
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.streams = streams

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, self.streams)
        # Worker w serves positions start+w, start+w+nw, ...; the loader takes one item
        # from each worker in turn, so the main process sees positions in order. Without
        # workers, the `streams` readers a worker pool would have are interleaved here.
        readers = [
            self.source.stream(self.start, w, nw, self.rank, self.world_size)
            for w in ([wid] if info else range(nw))
        ]
        while True:
            for reader in readers:
                pos, index, sample = next(reader)
                try:
                    item = self.processor(index, sample)
                    item.position = pos
                except Exception as e:  # a sample that breaks decoding/augmentation is skipped
                    item = Item(pos, skip=f"transform_error:{type(e).__name__}")
                yield item


class _ChunkStream(IterableDataset):
    """A worker's items in chunks of ``size``, images as numpy arrays.

    Sending one small tensor per item from a worker costs a shared-memory segment and a
    file descriptor each, which made two workers slower than none; a chunk of items
    whose images are plain arrays travels as one pickle through the pipe.
    """

    def __init__(self, items: _ItemStream, size: int) -> None:
        self.items = items
        self.size = size

    def __iter__(self) -> Iterator[list[Item]]:
        chunk: list[Item] = []
        for item in self.items:
            if item.image is not None:
                item.image = item.image.numpy()  # type: ignore[assignment]
            chunk.append(item)
            if len(chunk) == self.size:
                yield chunk
                chunk = []


def _interleave(chunks: Iterator[list[Item]], workers: int) -> Iterator[Item]:
    """Chunks arrive one per worker in turn; item j of each, in worker order, is the next
    run of consecutive positions, so zipping a round of chunks restores the order."""
    while True:
        round_ = [next(chunks) for _ in range(workers)]
        for items in zip(*round_, strict=True):
            for item in items:
                if item.image is not None:
                    item.image = torch.from_numpy(item.image)  # type: ignore[arg-type]
                yield item


def _from_workers(loader: DataLoader, workers: int) -> Iterator[Item]:
    """Items from the worker processes, in position order.

    A worker's ClipforgeError is re-raised with its own one-line message: the DataLoader
    puts the worker's traceback into the message, and for a user error only the last
    line, the message itself, is useful. The workers are shut down as soon as this
    generator ends, fails or is closed; left to garbage collection (an exception's
    traceback keeps the loader alive in a reference cycle) the shutdown can come much
    later and block for seconds wherever it happens.
    """
    loader_iter = iter(loader)
    try:
        yield from _interleave(loader_iter, workers)
    except ClipforgeError as exc:
        text = str(exc)
        marker = "ClipforgeError: "
        if marker in text:
            raise ClipforgeError(text.rsplit(marker, 1)[1].strip()) from None
        raise
    finally:
        shutdown = getattr(loader_iter, "_shutdown_workers", None)  # what its __del__ calls
        if shutdown is not None:
            shutdown()


def iter_batches(
    source: Source,
    processor: SampleProcessor,
    collate: Collator,
    batch_size: int,
    start: int = 0,
    workers: int = 0,
    max_consecutive_skips: int = 10_000,
    rank: int = 0,
    world_size: int = 1,
    streams: int | None = None,
) -> Iterator[Batch]:
    """Batches of ``batch_size`` valid samples from ``start`` on, skipping and counting bad ones.

    ``rank`` of ``world_size`` gets its disjoint share of the data (module docstring);
    ``start`` and ``Batch.next_position`` count that rank's positions. ``streams`` (for
    shards: readers per rank) defaults to ``max(workers, 1)`` and must equal ``workers``
    when there are workers; with ``workers=0`` the streams are interleaved in-process,
    which gives exactly the batches of ``workers=streams``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    streams = streams if streams is not None else max(workers, 1)
    if workers and streams != workers:
        raise ValueError(f"streams ({streams}) must equal workers ({workers}) when workers > 0")
    source.validate(streams * world_size)
    stream = _ItemStream(source, processor, start, rank, world_size, streams)
    items: Iterator[Item]
    if workers:
        chunk = 16
        loader = DataLoader(
            _ChunkStream(stream, chunk), batch_size=None, num_workers=workers, prefetch_factor=4
        )
        items = _from_workers(loader, workers)
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
