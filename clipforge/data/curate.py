"""MetaCLIP-style metadata curation: balance image-caption pairs over a list of entries.

MetaCLIP (Xu et al., 2023, "Demystifying CLIP Data") curates web pairs by matching each
caption against a metadata list of entries (words, phrases) and flattening the entry
distribution: with ``count(e)`` the number of pairs whose caption contains entry ``e``,
frequent ("head") entries are subsampled to about ``t`` pairs each while rare ("tail")
entries keep all of theirs. Here a pair is kept with probability

    p = min(1, t / min_{e matched} count(e))

i.e. by its rarest entry, so a pair that mentions any tail entry always survives; pairs
that match no entry are dropped (``keep_unmatched`` keeps them). The draw is
``np.random.default_rng(seed)`` over pairs in input order, so the same input, entries,
``t`` and seed give the same subset.

Matching is plain substring search (no word boundaries, as in MetaCLIP), case-insensitive
by default, with an Aho-Corasick automaton (``pyahocorasick``): one pass over the text
finds every entry, so the cost grows with the text length and the number of matches, not
with the number of entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.outputs import atomic_file, atomic_write

__all__ = [
    "Curation",
    "balance",
    "curate",
    "load_entries",
    "match_entries",
    "plot_histogram",
    "shapes_entries_path",
]

# Joins the captions of a chunk into one string for a single automaton pass; entries
# cannot contain it, so no match spans two captions.
_SEP = "\x00"
_CHUNK = 50_000


def shapes_entries_path() -> Path:
    """The metadata entry file shipped for the shapes world."""
    return Path(str(resources.files("clipforge.data") / "shapes_entries.txt"))


def load_entries(path: str | os.PathLike[str], case_sensitive: bool = False) -> list[str]:
    """Read one entry per line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"entry file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ClipforgeError(f"{p}: not valid UTF-8 text ({exc.reason})") from None
    entries: dict[str, None] = {}
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        entries[entry if case_sensitive else entry.lower()] = None
    if not entries:
        raise ClipforgeError(f"{p}: no entries")
    return list(entries)


def match_entries(
    texts: Sequence[str],
    entries: Sequence[str],
    case_sensitive: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (text, entry) match as two int64 arrays ``(text_index, entry_index)``.

    A text that contains an entry several times matches it once.
    """
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for index, entry in enumerate(entries):
        if _SEP in entry:
            raise ClipforgeError(f"entry {entry!r} contains a NUL character")
        automaton.add_word(entry if case_sensitive else entry.lower(), index)
    if len(automaton) == 0:
        raise ClipforgeError("no entries to match")
    automaton.make_automaton()
    pairs: list[np.ndarray] = []
    chunks = range(0, len(texts), _CHUNK)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="matching", unit="chunk", total=len(chunks))  # type: ignore[assignment]
    for lo in chunks:
        chunk = [t.replace(_SEP, " ") for t in texts[lo : lo + _CHUNK]]
        joined = _SEP.join(chunk) if case_sensitive else _SEP.join(chunk).lower()
        # Where each text starts in the joined string; a match is assigned to the text
        # its last character falls in.
        lengths = np.fromiter((len(t) + 1 for t in chunk), dtype=np.int64, count=len(chunk))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        found = np.array(list(automaton.iter(joined)), dtype=np.int64).reshape(-1, 2)
        text_index = np.searchsorted(starts, found[:, 0], side="right") - 1 + lo
        # One int64 per (text, entry) pair: a 1-D unique is far faster than a row unique.
        pairs.append(np.unique(text_index * len(entries) + found[:, 1]))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    both = np.concatenate(pairs)  # chunks cover disjoint texts, so no duplicates across
    return both // len(entries), both % len(entries)


@dataclass
class Curation:
    """The outcome of :func:`balance`."""

    entries: list[str]
    t: int
    seed: int
    keep: np.ndarray  # bool per pair
    matched: np.ndarray  # bool per pair: it matched some entry
    counts_before: np.ndarray  # pairs per entry in the input
    counts_after: np.ndarray  # pairs per entry among the kept pairs

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": int(self.keep.size),
            "matched": int(self.matched.sum()),
            "kept": int(self.keep.sum()),
            "t": self.t,
            "seed": self.seed,
            "entries": len(self.entries),
            "entries_matched": int((self.counts_before > 0).sum()),
            "max_count_before": int(self.counts_before.max(initial=0)),
            "max_count_after": int(self.counts_after.max(initial=0)),
        }

    def histogram(self) -> dict[str, list[int]]:
        """``{entry: [pairs before, pairs after]}`` for every entry."""
        return {
            e: [int(b), int(a)]
            for e, b, a in zip(self.entries, self.counts_before, self.counts_after, strict=True)
        }


def balance(
    texts: Sequence[str],
    entries: Sequence[str],
    t: int,
    seed: int = 0,
    keep_unmatched: bool = False,
    case_sensitive: bool = False,
    progress: bool = False,
) -> Curation:
    """Decide which pairs to keep (module docstring); ``texts[i]`` is pair i's caption text."""
    if t < 1:
        raise ClipforgeError(f"t must be >= 1, got {t}")
    n, n_entries = len(texts), len(entries)
    text_index, entry_index = match_entries(texts, entries, case_sensitive, progress)
    counts = np.bincount(entry_index, minlength=n_entries)
    # The count of each pair's rarest entry; unmatched pairs keep the sentinel.
    rarest = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(rarest, text_index, counts[entry_index])
    matched = rarest < np.iinfo(np.int64).max
    prob = np.where(matched, np.minimum(1.0, t / np.maximum(rarest, 1)), float(keep_unmatched))
    keep = np.random.default_rng(seed).random(n) < prob
    after = np.bincount(entry_index[keep[text_index]], minlength=n_entries)
    return Curation(list(entries), t, seed, keep, matched, counts, after)


def plot_histogram(result: Curation, path: str | os.PathLike[str]) -> None:
    """Entry counts before and after, entries sorted by count before (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-result.counts_before, kind="stable")
    before = result.counts_before[order]
    after = result.counts_after[order]
    shown = before > 0
    rank = np.arange(1, int(shown.sum()) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(rank, before[shown], label=f"before ({int(result.matched.sum())} matched pairs)")
    ax.plot(rank, np.maximum(after[shown], 0.8), label=f"after ({int(result.keep.sum())} kept)")
    ax.axhline(result.t, color="grey", linestyle="--", linewidth=1, label=f"t = {result.t}")
    if shown.any():
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # nothing to put on a log scale (matplotlib would raise)
        ax.text(0.5, 0.5, "no caption matched any entry", ha="center", transform=ax.transAxes)
    ax.set_xlabel("entry rank (by count before)")
    ax.set_ylabel("pairs matching the entry")
    ax.set_title("metadata entry histogram")
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Curating a data set on disk
# --------------------------------------------------------------------------------------------


def _raw_texts(data: dict[str, bytes] | None, caption_key: str) -> list[str]:
    """The captions of an undecoded shard sample, or none when they cannot be read."""
    if data is None:
        return []
    try:
        if caption_key in data:
            return data[caption_key].decode("utf-8").splitlines()
        if "json" in data:
            record = json.loads(data["json"])
            captions = record.get("captions", record.get("caption"))
            return [captions] if isinstance(captions, str) else list(captions or [])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        pass
    return []


def curate(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    entries: str | os.PathLike[str] | None = None,
    t: int = 20_000,
    seed: int = 0,
    keep_unmatched: bool = False,
    case_sensitive: bool = False,
    image_key: str = "image",
    caption_key: str = "caption",
    shard_size: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Curate a data set on disk into ``out_dir``; return the summary.

    A manifest or image folder becomes ``out_dir/curated.jsonl`` (image paths relative to
    ``out_dir``; every caption and the meta kept); tar shards become
    ``out_dir/curated-NNNNNN.tar`` with the kept samples' members copied as they are.
    ``out_dir/entry_counts.json`` holds the summary and ``{entry: [before, after]}``,
    ``out_dir/entry_histogram.png`` the plot. The summary's ``written`` names the data
    files (relative to ``out_dir``), ``written_samples`` counts the samples in them. A
    pair is matched on all its captions joined. ``entries`` defaults to the shapes-world
    entry file.
    """
    from clipforge.data.readers import ShardDataset, open_dataset

    entry_list = load_entries(entries or shapes_entries_path(), case_sensitive)
    ds = open_dataset(data, image_key=image_key, caption_key=caption_key)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(ds, ShardDataset):
        texts = [
            "\n".join(_raw_texts(getattr(item, "data", None), ds.caption_key))
            for item in _iter_raw(ds, progress, "reading captions")
        ]
    else:
        texts = []
        for i in range(len(ds)):
            try:
                texts.append("\n".join(ds.record(i)[0]))
            except Exception:  # an unreadable sidecar: no text, so no match
                texts.append("")
    result = balance(texts, entry_list, t, seed, keep_unmatched, case_sensitive, progress)
    if isinstance(ds, ShardDataset):
        written, samples = _write_kept_shards(ds, result.keep, out, shard_size, progress)
    else:
        manifest, samples = _write_kept_manifest(ds, result.keep, out)
        written = [manifest]
    summary = {
        **result.summary(),
        "input": os.fspath(data),
        "written": [p.relative_to(out).as_posix() for p in written],
        "written_samples": samples,
    }
    record = {**summary, "histogram": result.histogram()}
    atomic_write(out / "entry_counts.json", json.dumps(record, indent=1) + "\n")
    plot_histogram(result, out / "entry_histogram.png")
    return summary


def _iter_raw(ds: Any, progress: bool, desc: str) -> Iterator[Any]:
    shards = ds.shards
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc=desc, unit="shard")
    for shard in shards:
        yield from ds.read_shard(shard)


def _write_kept_shards(
    ds: Any, keep: np.ndarray, out: Path, shard_size: int, progress: bool
) -> tuple[list[Path], int]:
    """The shards written and the number of samples in them."""
    from clipforge.data.readers import RawSample
    from clipforge.data.writers import write_member_shards

    count = 0

    def kept() -> Iterator[tuple[str, dict[str, bytes]]]:
        nonlocal count
        for index, item in enumerate(_iter_raw(ds, progress, "copying kept samples")):
            if keep[index] and isinstance(item, RawSample) and item.data is not None:
                count += 1
                yield os.path.basename(item.key), item.data

    shards = write_member_shards(kept(), out, name="curated", shard_size=shard_size)
    return shards, count


def _write_kept_manifest(ds: Any, keep: np.ndarray, out: Path) -> tuple[Path, int]:
    """The manifest written and the number of rows in it."""
    path = out / "curated.jsonl"
    count = 0
    with atomic_file(path, "w") as f:
        for i in np.flatnonzero(keep):
            texts, meta = ds.record(int(i))
            if not texts:  # only reachable with keep_unmatched; unusable for training
                continue
            image = os.path.relpath(os.path.abspath(ds.image_path(int(i))), os.path.abspath(out))
            row = {"image": image, "caption": texts[0], "captions": texts, "meta": meta}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return path, count
