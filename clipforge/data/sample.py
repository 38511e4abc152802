"""The raw sample every data source yields, before augmentation and tokenization."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    """One image with one or more captions.

    ``texts`` holds every caption of the image (templates, rewrites, sub-captions);
    ``meta`` carries structured annotations when the source has them (the shapes world
    stores its objects with boxes, shapes, colours and sizes there).
    """

    image: Image.Image
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


class SampleError(Exception):
    """A single sample could not be used; the run skips it and counts ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped samples by reason so a run can report what it dropped."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def update(self, other: dict[str, int]) -> None:
        self.counts.update(other)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
