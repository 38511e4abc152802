"""MetaCLIP-style curation: matching, the keep rule, determinism and files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.cli.main import main
from clipforge.data.curate import (
    balance,
    curate,
    load_entries,
    match_entries,
    shapes_entries_path,
)
from clipforge.data.readers import ManifestDataset, ShardDataset
from clipforge.data.sample import Sample
from clipforge.data.writers import write_manifest, write_shards
from clipforge.errors import ClipforgeError

ENTRIES = ["cat", "dog", "red ball"]
# cat: 8 + 1 ("concatenate" contains it) + 1 (with the dog) = 10; dog: 2 + 1 = 3;
# red ball: 1 (upper case); two captions match nothing.
CAPTIONS = (
    ["a cat on a mat"] * 8
    + ["a dog", "a dog"]
    + ["a cat and a dog", "A RED BALL", "concatenate", "nothing here", "no match"]
)


def test_match_entries_is_substring_and_case_insensitive() -> None:
    texts, entries = match_entries(
        ["the cat sat", "CAT cat catalogue", "dog", "bird"], ["cat", "dog"]
    )
    # Each (text, entry) pair once, however often the entry occurs in the text.
    assert sorted(zip(texts.tolist(), entries.tolist(), strict=True)) == [(0, 0), (1, 0), (2, 1)]
    texts, _ = match_entries(["CAT"], ["cat"], case_sensitive=True)
    assert texts.size == 0


def test_hand_made_histogram_and_keep_probabilities() -> None:
    result = balance(CAPTIONS, ENTRIES, t=2, seed=7)
    assert result.counts_before.tolist() == [10, 3, 1]
    # Keep probability by the rarest matched entry: cat-only 2/10, dog (alone or with the
    # cat) 2/3, red ball 1, no match 0.
    p = np.array([0.2] * 8 + [2 / 3, 2 / 3, 2 / 3, 1.0, 0.2, 0.0, 0.0])
    keep = np.random.default_rng(7).random(len(CAPTIONS)) < p
    assert result.keep.tolist() == keep.tolist()
    cat = int(keep[:8].sum()) + int(keep[10]) + int(keep[12])
    dog = int(keep[8]) + int(keep[9]) + int(keep[10])
    assert result.counts_after.tolist() == [cat, dog, 1] == [2, 2, 1]
    assert result.matched.tolist() == [True] * 13 + [False, False]
    assert result.histogram() == {"cat": [10, int(cat)], "dog": [3, int(dog)], "red ball": [1, 1]}


def test_large_t_keeps_every_matched_pair_and_seed_decides_the_rest() -> None:
    everything = balance(CAPTIONS, ENTRIES, t=10)
    assert everything.keep.tolist() == [True] * 13 + [False, False]
    assert everything.counts_after.tolist() == [10, 3, 1]
    unmatched = balance(CAPTIONS, ENTRIES, t=10, keep_unmatched=True)
    assert unmatched.keep.all()
    # The head is flattened towards t and the draw is a function of the seed.
    many = ["a cat"] * 1000 + ["a dog"] * 30
    a, b, c = (balance(many, ENTRIES, t=100, seed=s) for s in (0, 0, 1))
    assert a.keep.tolist() == b.keep.tolist() and a.keep.tolist() != c.keep.tolist()
    assert 70 <= a.counts_after[0] <= 130 and a.counts_after[1] == 30


def test_entry_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "entries.txt"
    path.write_text("# comment\nCat\n\ncat\n dog \n")
    assert load_entries(path) == ["cat", "dog"]
    assert load_entries(path, case_sensitive=True) == ["Cat", "cat", "dog"]
    assert "red circle" in load_entries(shapes_entries_path())
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ClipforgeError, match="no entries"):
        load_entries(tmp_path / "empty.txt")
    with pytest.raises(ClipforgeError, match="t must be >= 1"):
        balance(CAPTIONS, ENTRIES, t=0)


def _samples() -> list[Sample]:
    image = Image.new("RGB", (8, 8), (200, 30, 30))
    return [
        Sample(image, [c, f"caption {i}"], {"i": i}, f"k{i:02d}") for i, c in enumerate(CAPTIONS)
    ]


@pytest.mark.parametrize("kind", ["manifest", "shards"])
def test_curate_writes_the_kept_pairs_and_the_histogram(tmp_path: Path, kind: str) -> None:
    entries = tmp_path / "entries.txt"
    entries.write_text("\n".join(ENTRIES) + "\n")
    if kind == "manifest":
        data = write_manifest(_samples(), tmp_path / "data", fmt="csv")
    else:
        write_shards(_samples(), tmp_path / "data", shard_size=4, image_format="png")
        data = tmp_path / "data"
    out = tmp_path / "curated"
    summary = curate(data, out, entries=entries, t=2, seed=7, shard_size=3)
    expected = balance(CAPTIONS, ENTRIES, t=2, seed=7)
    assert summary["kept"] == int(expected.keep.sum()) and summary["pairs"] == 15
    kept_index = [i for i in range(15) if expected.keep[i]]
    if kind == "manifest":
        ds = ManifestDataset(out / "curated.jsonl")
        loaded = [ds.load(i) for i in range(len(ds))]
    else:
        loaded = list(
            ShardDataset(sorted(str(p) for p in out.glob("curated-*.tar"))).iter_samples()
        )
    assert [s.meta["i"] for s in loaded] == kept_index
    assert [s.texts for s in loaded] == [[CAPTIONS[i], f"caption {i}"] for i in kept_index]
    counts = json.loads((out / "entry_counts.json").read_text())
    assert counts["histogram"]["cat"][0] == 10 and counts["histogram"]["red ball"] == [1, 1]
    assert (out / "entry_histogram.png").stat().st_size > 1000


def test_curate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_manifest(_samples(), tmp_path / "data", fmt="jsonl")
    assert main(["curate", str(data), "--out", str(tmp_path / "o"), "--t", "2"]) == 0
    # The default entries are the shapes world's; only "A RED BALL" mentions one ("red").
    assert "kept 1 of 15 pairs (1 matched 1 of 70 entries)" in capsys.readouterr().out
    code = main(["curate", str(data), "--out", str(tmp_path / "o2"), "--entries", "nope.txt"])
    assert (
        code == 2
        and capsys.readouterr().err.strip() == "clipforge: error: entry file not found: nope.txt"
    )
