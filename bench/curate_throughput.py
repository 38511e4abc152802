"""Curation throughput: MetaCLIP-style balancing of 1M captions over 10k entries.

Generates synthetic captions and entries in memory (nothing is downloaded), then times
:func:`clipforge.data.curate.balance` (Aho-Corasick matching, per-entry counts, the
seeded keep draw) and prints the time and the histogram's head before and after:

    python bench/curate_throughput.py --captions 1000000 --entries 10000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clipforge.data.curate import balance


def synthetic(n_captions: int, n_entries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Entries are made-up words; captions draw 6-14 words from a Zipf-like law over a
    vocabulary of entries plus filler words, as web alt-text is head-heavy."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(4, 10, n_entries * 2)
    words = list(dict.fromkeys("".join(rng.choice(letters, k)) for k in lengths))
    entries = words[:n_entries]
    vocab = words[: n_entries + n_entries // 2]  # some filler words match no entry
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    counts = rng.integers(6, 15, n_captions)
    picks = rng.choice(len(vocab), int(counts.sum()), p=p)
    vocab_arr = np.array(vocab, dtype=object)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    captions = [
        " ".join(vocab_arr[picks[a:b]]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return captions, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--t", type=int, default=2_000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    captions, entries = synthetic(args.captions, args.entries)
    t1 = time.perf_counter()
    print(f"generated {len(captions):,} captions x {len(entries):,} entries in {t1 - t0:.1f} s")
    result = balance(captions, entries, t=args.t, seed=0, progress=True)
    t2 = time.perf_counter()
    s = result.summary()
    print(
        f"curated in {t2 - t1:.1f} s ({len(captions) / (t2 - t1):,.0f} captions/s): kept "
        f"{s['kept']:,} of {s['pairs']:,} pairs; {s['entries_matched']:,} entries matched; "
        f"largest entry {s['max_count_before']:,} -> {s['max_count_after']:,} pairs (t={args.t})"
    )


if __name__ == "__main__":
    main()
