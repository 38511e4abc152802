"""Where samples come from: a :class:`Source` serves the sample at a stream position.

Random-access sources (the shapes world, manifests, image folders) serve index ``g`` of
the global order directly; tar shards are a stream (:mod:`clipforge.data.stream`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clipforge.data.sample import Sample, SampleError
from clipforge.data.shapes import ShapesWorld
from clipforge.errors import ClipforgeError


class Source:
    """A stream of samples addressed by position; one item per position, forever.

    ``get(position)`` returns a :class:`Sample` or raises :class:`SampleError`. Finite data
    sets wrap around in epochs, each with its own permutation.
    """

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


def open_source(
    path: str,
    *,
    seed: int = 0,
    image_key: str = "image",
    caption_key: str = "caption",
    shuffle_buffer: int = 1000,
    resample: bool = False,
) -> Source:
    """The training source for data on disk: tar shards as a replayable stream, any
    random-access format (manifest, image folder) reshuffled per epoch."""
    from clipforge.data.readers import open_dataset
    from clipforge.data.stream import ShardStream  # it subclasses Source: imported late

    ds = open_dataset(path, image_key=image_key, caption_key=caption_key)
    if ds.streaming:
        return ShardStream(ds, seed=seed, buffer=shuffle_buffer, resample=resample)
    if len(ds) == 0:
        raise ClipforgeError(f"{path}: the manifest has no rows")
    return IndexedSource(ds, seed=seed)
