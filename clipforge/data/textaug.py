"""Caption augmentation: word dropout, sentence shuffle and synonym swap.

Improved-baselines CLIP recipes perturb captions the way crops perturb images, which
matters most when the data is small. Every operation draws from the ``random.Random``
the caller passes (the sample's own, seeded by its position), so an augmented caption is
a function of ``(seed, position)`` like the crop, and a resumed run sees the same text.

Synonym lists are plain text, one group per line, comma-separated; every word of a group
may replace any other (``small, little, tiny``). Lines starting with ``#`` are comments.
Entries may be phrases (``light blue, pale blue``); matching is whole-word and keeps the
case of the first letter.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.errors import ClipforgeError

__all__ = ["TextAugment", "load_synonyms"]

# Sentences end at . ! ? followed by whitespace; the punctuation stays with its sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def load_synonyms(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a synonym file into ``{phrase: [alternatives]}`` (lower-case keys)."""
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"synonym file not found: {p}")
    table: dict[str, list[str]] = {}
    for line_no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        group = list(dict.fromkeys(w.strip().lower() for w in line.split(",") if w.strip()))
        if len(group) < 2:
            raise ClipforgeError(f"{p}:{line_no}: a synonym group needs at least two entries")
        for word in group:
            others = [w for w in group if w != word]
            table.setdefault(word, [])
            table[word] += [w for w in others if w not in table[word]]
    return table


@dataclass
class TextAugment:
    """Perturb one caption; callable as ``aug(text, rnd)``.

    * ``word_dropout``: each word is dropped with this probability (at least one word
      always stays);
    * ``sentence_shuffle``: a caption of several sentences gets them in random order;
    * ``synonym_prob``: each phrase found in ``synonyms`` is swapped for a random
      alternative with this probability.

    With every option off the caption is returned unchanged and ``rnd`` is not touched.
    """

    word_dropout: float = 0.0
    sentence_shuffle: bool = False
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    synonym_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.word_dropout < 1.0:
            raise ClipforgeError(f"word dropout must be in [0, 1), got {self.word_dropout}")
        if not 0.0 <= self.synonym_prob <= 1.0:
            raise ClipforgeError(f"synonym probability must be in [0, 1], got {self.synonym_prob}")
        self._pattern: re.Pattern[str] | None = None
        if self.synonyms and self.synonym_prob > 0:
            # Longest phrases first, so "light blue" wins over "blue".
            words = sorted(self.synonyms, key=len, reverse=True)
            alternation = "|".join(re.escape(w) for w in words)
            self._pattern = re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE)

    @property
    def active(self) -> bool:
        return self.word_dropout > 0 or self.sentence_shuffle or self._pattern is not None

    def __call__(self, text: str, rnd: random.Random) -> str:
        if self.sentence_shuffle:
            sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
            if len(sentences) > 1:
                rnd.shuffle(sentences)
                text = " ".join(sentences)
        if self._pattern is not None:
            text = self._pattern.sub(lambda m: self._swap(m.group(0), rnd), text)
        if self.word_dropout > 0:
            words = text.split()
            kept = [w for w in words if rnd.random() >= self.word_dropout]
            text = " ".join(kept) if kept else (words[rnd.randrange(len(words))] if words else "")
        return text

    def _swap(self, found: str, rnd: random.Random) -> str:
        if rnd.random() >= self.synonym_prob:
            return found
        choice = rnd.choice(self.synonyms[found.lower()])
        return choice[:1].upper() + choice[1:] if found[:1].isupper() else choice
