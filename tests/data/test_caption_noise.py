"""--caption-noise: a seeded fraction of captions moved between the samples of a batch."""

from __future__ import annotations

import itertools
import math
from collections import Counter

from clipforge.data.batches import Collator, Item, SampleProcessor, noisy_positions, swap_captions
from clipforge.data.loader import iter_batches
from clipforge.data.shapes import ShapesWorld
from clipforge.data.sources import ShapesSource
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop


def _items(positions: list[int]) -> list[Item]:
    return [Item(p, texts=[f"caption {p}"]) for p in positions]


def test_the_noisy_fraction_is_p_within_binomial_error():
    n, p = 20_000, 0.3
    share = sum(noisy_positions(list(range(n)), p, seed=0)) / n
    # Independent draws: the share is Binomial(n, p) / n, sd sqrt(p (1 - p) / n) = 0.0032;
    # 5 sd is a 1-in-3.5-million miss.
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert not any(noisy_positions(list(range(100)), 0.0, seed=0))
    assert all(noisy_positions(list(range(100)), 1.0, seed=0))


def test_noisy_samples_pass_their_captions_round_a_ring():
    items = _items(list(range(64)))
    out = swap_captions(items, 0.3, seed=1)
    flagged = noisy_positions(list(range(64)), 0.3, seed=1)
    moved = [a.text != b.text for a, b in zip(items, out, strict=True)]
    assert moved == flagged  # every flagged sample gets another's caption, no other does
    # A permutation: no caption lost or duplicated, images (positions) unchanged.
    assert Counter(it.text for it in out) == Counter(it.text for it in items)
    assert [it.position for it in out] == list(range(64))


def test_the_draw_depends_on_the_position_not_on_the_batch():
    # Same positions in another seed: other draws; same seed: the same flags whatever
    # the neighbours (the per-sample decision is what a resumed run must repeat).
    a = noisy_positions([5, 6, 7, 8], 0.5, seed=2)
    b = noisy_positions([100, 7, 5, 42, 8, 6], 0.5, seed=2)
    assert [a[0], a[1], a[2], a[3]] == [b[2], b[5], b[1], b[4]]
    assert noisy_positions(list(range(200)), 0.5, 2) != noisy_positions(list(range(200)), 0.5, 3)


def test_a_lone_noisy_sample_copies_another_caption():
    positions = list(range(1000))
    flags = noisy_positions(positions, 0.05, seed=0)
    # The first stretch of 4 positions with exactly one flagged sample.
    start = next(s for s in range(996) if sum(flags[s : s + 4]) == 1)
    items = _items(positions[start : start + 4])
    out = swap_captions(items, 0.05, seed=0)
    i = flags[start : start + 4].index(True)
    assert out[i].text != items[i].text and out[i].text in {it.text for it in items}
    assert [it.text for k, it in enumerate(out) if k != i] == [
        it.text for k, it in enumerate(items) if k != i
    ]


def _batches(start: int, noise: float):
    return iter_batches(
        ShapesSource(ShapesWorld(16, split="train", seed=0)),
        SampleProcessor(SeededCrop(16), seed=0),
        Collator(get_tokenizer(24), (0.5,) * 3, (0.5,) * 3, caption_noise=noise, seed=0),
        batch_size=8,
        start=start,
    )


def test_resumed_batches_repeat_the_noise_bit_for_bit():
    full = list(itertools.islice(_batches(0, 0.3), 4))
    resumed = list(itertools.islice(_batches(full[1].next_position, 0.3), 2))
    for a, b in zip(full[2:], resumed, strict=True):
        assert a.texts == b.texts
    clean = list(itertools.islice(_batches(0, 0.0), 4))
    changed = sum(
        x != y
        for a, b in zip(full, clean, strict=True)
        for x, y in zip(a.texts, b.texts, strict=True)
    )
    assert 0 < changed < 32
    # The images are untouched: noise moves captions only.
    assert all(a.images.equal(b.images) for a, b in zip(full, clean, strict=True))
