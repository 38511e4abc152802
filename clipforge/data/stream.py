"""The replayable tar-shard stream: shards dealt to streams per epoch, a seeded shuffle
buffer, and a restart at any saved position."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np

from clipforge.data.readers import RawSample, ShardDataset
from clipforge.data.sample import Sample, SampleError
from clipforge.data.sources import Source
from clipforge.errors import ClipforgeError


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
