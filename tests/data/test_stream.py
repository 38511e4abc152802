"""Shard streams: rank/worker split, shuffle buffer, resampling and exact resume."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data.batches import Collator, SampleProcessor
from clipforge.data.loader import iter_batches
from clipforge.data.readers import ManifestDataset, ShardDataset
from clipforge.data.sample import Sample
from clipforge.data.shapes import ShapesWorld
from clipforge.data.sources import IndexedSource, ShapesSource
from clipforge.data.stream import ShardStream
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop
from clipforge.data.writers import write_manifest, write_shards
from clipforge.errors import ClipforgeError


def _samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
            [f"sample {i:03d}"],
            key=f"s{i:03d}",
        )
        for i in range(n)
    ]


def _write(folder: Path, sizes: list[int]) -> ShardDataset:
    """Shards of the given sizes, samples numbered across them; PNG keeps it lossless."""
    samples = iter(_samples(sum(sizes)))
    paths = []
    for s, size in enumerate(sizes):
        chunk = list(itertools.islice(samples, size))
        (path,) = write_shards(
            chunk, folder, name=f"part{s:02d}", shard_size=size, image_format="png"
        )
        paths.append(str(path))
    return ShardDataset(paths)


def _keys(items) -> list[str]:
    return [x.key for x in items]


def _pipeline(source, workers: int = 0, rank: int = 0, world_size: int = 1, start: int = 0, **kw):
    return iter_batches(
        source,
        SampleProcessor(SeededCrop(8, (0.5, 1.0)), seed=3, caption="first"),
        Collator(get_tokenizer(16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        batch_size=5,
        start=start,
        workers=workers,
        rank=rank,
        world_size=world_size,
        **kw,
    )


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(tmp_path: Path) -> None:
    ds = _write(tmp_path, [10] * 8)
    texts: list[str] = []
    for rank in (0, 1):
        source = ShardStream(ds, seed=5, buffer=6)
        # Equal shards: each of the 4 streams holds 2 shards = 20 samples per epoch.
        batches = _pipeline(source, workers=2, rank=rank, world_size=2)
        texts += [t for b in itertools.islice(batches, 8) for t in b.texts]
    assert len(texts) == 80
    assert sorted(texts) == [f"sample {i:03d}" for i in range(80)]


def test_streams_of_unequal_shards_partition_each_epoch(tmp_path: Path) -> None:
    ds = _write(tmp_path, [7, 3, 11, 5, 9])
    source = ShardStream(ds, seed=1, buffer=4)
    for epoch in range(3):
        keys: list[str] = []
        for stream in range(3):
            shards = source.epoch_shards(epoch, stream, 3)
            n = sum(ds.count_shard(s) for s in shards)
            # Skip the stream's earlier epochs, then read exactly this one.
            before = sum(
                ds.count_shard(s) for e in range(epoch) for s in source.epoch_shards(e, stream, 3)
            )
            keys += _keys(itertools.islice(source.iter_stream(stream, 3, before), n))
        assert sorted(keys) == [f"s{i:03d}" for i in range(35)], epoch


def test_shuffle_buffer_mixes_within_and_reorders_across_epochs(tmp_path: Path) -> None:
    ds = _write(tmp_path, [10, 10])
    ordered = _keys(itertools.islice(ShardStream(ds, seed=0, buffer=0).iter_stream(0, 1), 20))
    # No buffer: each shard in tar order (shard order still permuted per epoch).
    assert sorted(ordered[:10]) == ordered[:10] and sorted(ordered[10:]) == ordered[10:]
    mixed = _keys(itertools.islice(ShardStream(ds, seed=0, buffer=8).iter_stream(0, 1), 40))
    assert sorted(mixed[:20]) == sorted(ordered) and mixed[:20] != ordered
    assert sorted(mixed[20:]) == sorted(ordered) and mixed[20:] != mixed[:20]
    # Items cross shard boundaries: some item of the second shard read comes out early.
    first_half = {k for k in ordered[10:]}
    assert first_half & set(mixed[:10])


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_resume_at_any_position_is_exact(tmp_path: Path, streams: int) -> None:
    ds = _write(tmp_path, [9, 4, 12, 6, 8])
    source = ShardStream(ds, seed=2, buffer=7)
    for stream in range(streams):
        ref = _keys(itertools.islice(source.iter_stream(stream, streams), 110))
        for start in (1, 6, 7, 13, 30, 39, 64, 90):
            fresh = ShardStream(ds, seed=2, buffer=7)  # no cached counts
            got = _keys(itertools.islice(fresh.iter_stream(stream, streams, start), 20))
            assert got == ref[start : start + 20], (stream, start)


def test_resumed_batches_with_workers_equal_uninterrupted_ones(tmp_path: Path) -> None:
    ds = _write(tmp_path, [8, 12, 7, 9])
    full = list(itertools.islice(_pipeline(ShardStream(ds, seed=4, buffer=5), workers=2), 12))
    cut = full[4].next_position
    resumed = _pipeline(ShardStream(ds, seed=4, buffer=5), workers=2, start=cut)
    for a, b in zip(full[5:], itertools.islice(resumed, 7), strict=True):
        assert a.texts == b.texts and torch.equal(a.images, b.images)
        assert a.next_position == b.next_position


def test_workers_and_in_process_streams_give_identical_batches(tmp_path: Path) -> None:
    ds = _write(tmp_path, [10, 10, 10])
    a = list(itertools.islice(_pipeline(ShardStream(ds, seed=0), workers=2), 6))
    b = list(itertools.islice(_pipeline(ShardStream(ds, seed=0), workers=0, streams=2), 6))
    for x, y in zip(a, b, strict=True):
        assert x.texts == y.texts and torch.equal(x.images, y.images)


def test_resample_draws_shards_with_replacement(tmp_path: Path) -> None:
    ds = _write(tmp_path, [4, 4, 4])
    source = ShardStream(ds, seed=0, resample=True)
    draws = [source.epoch_shards(e, s, 5) for e in range(20) for s in range(5)]
    assert all(len(d) == 1 for d in draws)  # ceil(3 shards / 5 streams)
    counts = Counter(d[0] for d in draws)
    assert set(counts) == set(ds.shards) and max(counts.values()) > 100 / 3
    # More streams than shards is fine with resampling, and still deterministic.
    first = _keys(itertools.islice(source.iter_stream(4, 5), 12))
    assert first == _keys(itertools.islice(ShardStream(ds, resample=True).iter_stream(4, 5), 12))
    with pytest.raises(ClipforgeError, match="3 shards cannot feed 4 streams"):
        next(ShardStream(ds).iter_stream(0, 4))
    # Checked before workers start: 2 ranks x 2 workers.
    with pytest.raises(ClipforgeError, match="^3 shards cannot feed 4 streams"):
        next(_pipeline(ShardStream(ds), workers=2, world_size=2))


def test_a_user_error_inside_a_worker_stays_one_line(tmp_path: Path) -> None:
    class Unchecked(ShardStream):
        def validate(self, streams: int) -> None:
            pass  # let the worker find out

    ds = _write(tmp_path, [4])
    with pytest.raises(ClipforgeError) as err:
        next(_pipeline(Unchecked(ds), workers=2))
    assert str(err.value).startswith("1 shards cannot feed 2 streams") and "\n" not in str(
        err.value
    )


def test_random_access_sources_split_by_rank(tmp_path: Path) -> None:
    manifest = write_manifest(_samples(12), tmp_path / "m")
    texts: list[str] = []
    for rank in (0, 1):
        source = IndexedSource(ManifestDataset(manifest), seed=0)
        batches = _pipeline(source, workers=2 if rank else 0, rank=rank, world_size=2)
        # Positions 0..5 of each rank are global indices 0..11: one epoch between them.
        texts += [t for b in itertools.islice(batches, 2) for t in b.texts][:6]
    assert sorted(texts) == [f"sample {i:03d}" for i in range(12)]


def test_rank_positions_map_to_global_indices() -> None:
    world = ShapesWorld(8, seed=0)
    rank1 = list(itertools.islice(ShapesSource(world).stream(0, 0, 1, rank=1, world_size=3), 4))
    assert [(p, g) for p, g, _ in rank1] == [(0, 1), (1, 4), (2, 7), (3, 10)]
    assert [s.texts for _, _, s in rank1] == [world.sample(g).texts for g in (1, 4, 7, 10)]
    # With one rank, sample p is seeded by p as before ranks existed.
    proc = SampleProcessor(SeededCrop(8, (0.5, 1.0)), seed=3, caption="first")
    batch = next(_pipeline(ShapesSource(world)))
    expected = torch.stack([proc(p, world.sample(p)).image for p in range(5)])
    assert torch.equal(
        batch.images,
        Collator(get_tokenizer(16), (0.5,) * 3, (0.5,) * 3)(
            [proc(p, world.sample(p)) for p in range(5)], 5, {}
        ).images,
    )
    assert expected.shape == (5, 3, 8, 8)
    with pytest.raises(ValueError, match="rank 2"):
        next(_pipeline(ShapesSource(world), rank=2, world_size=2))
