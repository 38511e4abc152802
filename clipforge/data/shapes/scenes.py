"""The shapes world's vocabulary and scene model: shapes, colours, sizes, objects, relations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (50, 210, 220),
    "white": (245, 245, 245),
}
SIZES: dict[str, float] = {"small": 0.15, "large": 0.25}  # radius as a fraction of the side
# Shapes and colours the training scenes never use: out-of-distribution probes for eval.
OOD_SHAPES: tuple[str, ...] = ("hexagon", "diamond")
OOD_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 150, 200),
    "brown": (140, 85, 35),
    "grey": (140, 140, 140),
}
# Radius of the objects of counting scenes: small enough that ten of them fit.
COUNT_RADIUS = 0.07
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
COLOUR_NAMES = tuple(COLOURS)
SIZE_NAMES = tuple(SIZES)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Plurals that English does not form with a plain "s".
_PLURAL = {"cross": "crosses"}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; ``box`` is (x0, y0, x1, y1) in pixels of the rendered image."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def phrase(self, with_size: bool = True) -> str:
        words = [self.size] if with_size else []
        words += [self.colour, self.shape]
        return f"{article(words[0])} {' '.join(words)}"


@dataclass
class Scene:
    """A list of objects and how the scene was composed (``kind``: single, group, pair, many)."""

    objects: list[ShapeObject]
    kind: str
    background: tuple[int, int, int]
    relation: str | None = None  # for pairs: relation of objects[0] to objects[1]
    extra: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # side of the rendered image, for absolute positions

    def meta(self) -> dict[str, Any]:
        meta = {
            "kind": self.kind,
            "count": len(self.objects),
            "relation": self.relation,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "box": list(o.box)}
                for o in self.objects
            ],
        }
        if self.image_size is not None:
            meta["image_size"] = self.image_size
        return meta


def relation_of(a: ShapeObject, b: ShapeObject) -> str:
    """Spatial relation of ``a`` to ``b`` along the axis on which they are farther apart."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# Where a relation puts each of its two objects, in absolute terms.
PLACES = {
    "left of": ("on the left", "on the right"),
    "right of": ("on the right", "on the left"),
    "above": ("at the top", "at the bottom"),
    "below": ("at the bottom", "at the top"),
}


def place_of(o: ShapeObject, image_size: int) -> str:
    """Where a lone object sits: the side it is nearest to, or the middle."""
    cx, cy = o.center
    dx, dy = cx / image_size - 0.5, cy / image_size - 0.5
    if max(abs(dx), abs(dy)) < 1 / 6:
        return "in the middle"
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"
