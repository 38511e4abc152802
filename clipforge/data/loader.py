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

Worker processes end with the training process, however it ends, and leave Ctrl-C to
it (:mod:`clipforge.data.workers`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.data.batches import Batch, Collator, Item, SampleProcessor
from clipforge.data.sample import SkipCounter
from clipforge.data.sources import Source
from clipforge.data.workers import worker_init
from clipforge.errors import ClipforgeError


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
        # This generator's body runs in the thread that first asks for a batch; the
        # DataLoader forks its workers from that thread when _from_workers iterates.
        by_main = threading.current_thread() is threading.main_thread()
        loader = DataLoader(
            _ChunkStream(stream, chunk), batch_size=None, num_workers=workers, prefetch_factor=4,
            worker_init_fn=functools.partial(worker_init, os.getpid(), by_main),
        )  # fmt: skip
        items = _from_workers(loader, workers)
    else:
        items = iter(stream)
    skipped = SkipCounter()
    run_of_skips = 0
    pending: list[Item] = []
    try:
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
    finally:
        # Closed with this generator, so worker processes end with it, not at collection.
        close = getattr(items, "close", None)
        if close is not None:
            close()
