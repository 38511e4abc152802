"""Caption augmentation and its hook in the sample processor."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from clipforge.data.batches import SampleProcessor
from clipforge.data.shapes import ShapesWorld
from clipforge.data.textaug import TextAugment, load_synonyms
from clipforge.data.transforms import SeededCrop
from clipforge.errors import ClipforgeError


def test_word_dropout_rate_and_never_empty() -> None:
    aug = TextAugment(word_dropout=0.3)
    words = [f"w{i}" for i in range(2000)]
    out = aug(" ".join(words), random.Random(0)).split()
    assert 0.66 <= len(out) / len(words) <= 0.74
    assert out == [w for w in words if w in set(out)]  # order kept
    # A one-word caption always keeps a word, even at a high rate.
    assert all(TextAugment(word_dropout=0.9)("cat", random.Random(s)) == "cat" for s in range(50))


def test_sentence_shuffle_permutes_sentences() -> None:
    aug = TextAugment(sentence_shuffle=True)
    text = "A red circle. It is small! Is it left of a star? Yes."
    outs = {aug(text, random.Random(s)) for s in range(30)}
    parts = ["A red circle.", "It is small!", "Is it left of a star?", "Yes."]
    assert len(outs) > 5
    for out in outs:
        assert sorted(p for p in parts if p in out) == sorted(parts)
        assert len(out) == len(text)
    assert aug("one sentence only", random.Random(0)) == "one sentence only"


def test_synonym_swap_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "syn.txt"
    path.write_text("# sizes\nsmall, little, tiny\nlight blue, pale blue\n")
    table = load_synonyms(path)
    assert table["small"] == ["little", "tiny"] and table["pale blue"] == ["light blue"]
    always = TextAugment(synonyms=table, synonym_prob=1.0)
    out = always("Small light blue circle, smallish", random.Random(1))
    first = out.split()[0]
    assert first in ("Little", "Tiny")  # capital kept
    assert "pale blue" in out and out.endswith("smallish")  # whole words only
    never = TextAugment(synonyms=table, synonym_prob=0.0)
    assert never("small circle", random.Random(1)) == "small circle"
    (tmp_path / "bad.txt").write_text("small, little\nalone\n")
    with pytest.raises(ClipforgeError, match=r"bad\.txt:2: .*at least two"):
        load_synonyms(tmp_path / "bad.txt")
    with pytest.raises(ClipforgeError, match="word dropout"):
        TextAugment(word_dropout=1.0)


def test_processor_hook_is_seeded_by_position_and_leaves_crops_alone() -> None:
    world = ShapesWorld(16, seed=0)
    crop = SeededCrop(16, (0.5, 1.0))
    plain = SampleProcessor(crop, seed=1)
    aug = SampleProcessor(crop, seed=1, text_aug=TextAugment(word_dropout=0.5))
    texts = []
    for pos in range(20):
        a, b = plain(pos, world.sample(pos)), aug(pos, world.sample(pos))
        assert torch.equal(a.image, b.image)
        assert set(b.text.split()) <= set(a.text.split())
        assert aug(pos, world.sample(pos)).text == b.text  # same position, same text
        texts.append(b.text != a.text)
    assert sum(texts) >= 15
    assert not TextAugment().active
