"""The shapes world: a procedural, seeded image-caption data set.

Every image holds 1-4 coloured shapes on a dark background; every image comes with
several captions (different templates and phrasings) and structured metadata (per
object: box, shape, colour, size). Because everything about a scene is known, the
shapes world doubles as clipforge's benchmark: zero-shot classification over colour x
shape, retrieval, counting, relations and attribute binding can all be probed exactly.

Samples are a pure function of ``(seed, split, index)``: sample 1234 of the training
split is the same image on every machine and in every worker, which is what makes a
resumed run continue bit-for-bit. Splits draw from disjoint seed streams.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from clipforge.data.sample import Sample
from clipforge.errors import ClipforgeError

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
_COLOUR_NAMES = tuple(COLOURS)
_SIZE_NAMES = tuple(SIZES)
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


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# Where a relation puts each of its two objects, in absolute terms.
_PLACES = {
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


def captions_for(scene: Scene, positions: bool = False) -> list[str]:
    """All captions of a scene. The first is the canonical, most detailed one.

    With ``positions``, single-object and two-object scenes get extra captions that say
    where the objects are in the image ("a red circle on the left and a blue square on
    the right"); they come after the usual ones, so template numbers stay the same.
    """
    caps = _captions(scene)
    if not positions:
        return caps
    objs = scene.objects
    if scene.kind == "single" and scene.image_size:
        o = objs[0]
        caps.append(f"{o.phrase(False)} {place_of(o, scene.image_size)}")
    elif scene.kind == "pair":
        a, b = objs
        pa, pb = _PLACES[scene.relation or relation_of(a, b)]
        caps.append(f"{a.phrase(True)} {pa} and {b.phrase(True)} {pb}")
        caps.append(f"{a.phrase(False)} {pa} and {b.phrase(False)} {pb}")
    return caps


def _captions(scene: Scene) -> list[str]:
    objs = scene.objects
    if scene.kind == "single":
        o = objs[0]
        return [
            o.phrase(True),
            o.phrase(False),
            f"a photo of {o.phrase(False)}",
            f"one {o.colour} {o.shape}",
            f"a picture of {o.phrase(True)}",
            f"there is {o.phrase(False)}",
        ]
    if scene.kind == "group":
        o, n = objs[0], len(objs)
        word = NUMBER_WORDS[n]
        return [
            f"{word} {o.size} {o.colour} {plural(o.shape)}",
            f"{word} {o.colour} {plural(o.shape)}",
            f"{n} {o.colour} {plural(o.shape)}",
            f"a photo of {word} {o.colour} {plural(o.shape)}",
            f"a group of {word} {o.colour} {plural(o.shape)}",
        ]
    if scene.kind == "pair":
        a, b = objs
        rel = scene.relation or relation_of(a, b)
        inv = _INVERSE[rel]
        return [
            f"{a.phrase(True)} {rel} {b.phrase(True)}",
            f"{a.phrase(False)} {rel} {b.phrase(False)}",
            f"{b.phrase(False)} {inv} {a.phrase(False)}",
            f"{a.phrase(False)} and {b.phrase(False)}",
            f"{b.phrase(False)} and {a.phrase(False)}",
        ]
    # "many": objects listed from left to right in the canonical caption.
    ordered = sorted(objs, key=lambda o: o.center[0])
    full = [o.phrase(True) for o in ordered]
    short = [o.phrase(False) for o in ordered]
    n = len(objs)
    return [
        ", ".join(full[:-1]) + " and " + full[-1],
        ", ".join(short[:-1]) + " and " + short[-1],
        f"{NUMBER_WORDS[n]} shapes: " + ", ".join(short[:-1]) + " and " + short[-1],
        f"{NUMBER_WORDS[n]} objects",
    ]


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator. The defaults are the data set clipforge trains on by default."""

    image_size: int = 64
    count_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)  # P(1 object), P(2), P(3), P(4)
    group_prob: float = 0.5  # of multi-object scenes, how many are n copies of one object
    supersample: int = 4  # render larger and downsample, for anti-aliased edges
    position_captions: bool = False  # add captions naming where objects are (see captions_for)


class ShapesWorld:
    """Deterministic generator of shapes-world samples.

    ``ShapesWorld(image_size=32, split="train", seed=0).sample(i)`` returns sample ``i``.
    """

    def __init__(
        self,
        image_size: int = 64,
        split: str = "train",
        seed: int = 0,
        config: ShapesConfig | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ClipforgeError(f"unknown shapes split {split!r} (known: {', '.join(SPLITS)})")
        if image_size < 8:
            raise ClipforgeError(f"shapes image size must be >= 8, got {image_size}")
        cfg = config or ShapesConfig()
        self.config = ShapesConfig(**{**asdict(cfg), "image_size": image_size})
        self.image_size = image_size
        self.split = split
        self.seed = seed

    # -- randomness ---------------------------------------------------------------------
    def rng(self, index: int, stream: int = 0) -> random.Random:
        """The generator of sample ``index``; splits and streams never share entropy.

        Python's generator, seeded through SHA-512 of the string, is used rather than
        numpy's: scenes take dozens of scalar draws, where numpy's per-call cost dominates.
        """
        return random.Random(f"{self.seed}/{self.split}/{stream}/{index}")

    # -- scenes -------------------------------------------------------------------------
    def _place(
        self, rng: random.Random, sizes: list[str], boxes: list[tuple[float, ...]]
    ) -> list[tuple[float, float, float, float]] | None:
        s = self.image_size
        out: list[tuple[float, float, float, float]] = []
        for size in sizes:
            r = SIZES[size] * s * rng.uniform(0.9, 1.1)
            for _ in range(50):
                cx, cy = rng.uniform(r + 1, s - r - 1), rng.uniform(r + 1, s - r - 1)
                box = (cx - r, cy - r, cx + r, cy + r)
                # A gap of 1 px keeps objects countable after downsampling.
                if all(
                    box[2] + 1 < b[0] or b[2] + 1 < box[0] or box[3] + 1 < b[1] or b[3] + 1 < box[1]
                    for b in [*boxes, *out]
                ):
                    out.append(box)
                    break
            else:
                return None
        return out

    def scene(self, index: int) -> Scene:
        """The scene (objects and layout) of sample ``index``."""
        rng = self.rng(index)
        cfg = self.config
        counts = range(1, len(cfg.count_weights) + 1)
        while True:
            n = rng.choices(counts, weights=cfg.count_weights)[0]
            if n == 1:
                kind = "single"
            elif rng.random() < cfg.group_prob:
                kind = "group"
            else:
                kind = "pair" if n == 2 else "many"
            if kind == "group":
                attrs = [
                    (rng.choice(SHAPES), rng.choice(_COLOUR_NAMES), rng.choice(_SIZE_NAMES))
                ] * n
            else:
                attrs = [
                    (rng.choice(SHAPES), rng.choice(_COLOUR_NAMES), rng.choice(_SIZE_NAMES))
                    for _ in range(n)
                ]
                if kind == "pair" and attrs[0] == attrs[1]:
                    continue  # "a red circle left of a red circle" says nothing useful
            boxes = self._place(rng, [a[2] for a in attrs], [])
            if boxes is None:
                continue  # did not fit; draw another scene from the same stream
            objects = [
                ShapeObject(sh, c, sz, b) for (sh, c, sz), b in zip(attrs, boxes, strict=True)
            ]
            bg = (rng.randint(10, 59), rng.randint(10, 59), rng.randint(10, 59))
            relation = relation_of(objects[0], objects[1]) if kind == "pair" else None
            return Scene(objects, kind, bg, relation, image_size=self.image_size)  # type: ignore[arg-type]

    def object_scene(self, index: int, shape: str, colour: str, size: str | None = None) -> Scene:
        """A single-object scene with the given attributes (for classification sets)."""
        rng = self.rng(index, stream=1)
        size = size or rng.choice(_SIZE_NAMES)
        boxes = self._place(rng, [size], [])
        assert boxes is not None  # one object always fits
        bg = (rng.randint(10, 59), rng.randint(10, 59), rng.randint(10, 59))
        obj = ShapeObject(shape, colour, size, boxes[0])  # type: ignore[arg-type]
        return Scene([obj], "single", bg, image_size=self.image_size)

    # -- rendering ----------------------------------------------------------------------
    def render(self, scene: Scene, rng: random.Random | None = None) -> Image.Image:
        """Draw a scene as an RGB image of ``image_size`` pixels."""
        k = self.config.supersample
        s = self.image_size * k
        img = Image.new("RGB", (s, s), scene.background)
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            fill = COLOURS[o.colour]
            if rng is not None:  # slight colour jitter so colours are bands, not points
                fill = tuple(min(255, max(0, round(v + rng.gauss(0, 8)))) for v in fill)
            x0, y0, x1, y1 = (v * k for v in o.box)
            _draw_shape(draw, o.shape, x0, y0, x1, y1, fill)
        return img.resize((self.image_size, self.image_size), Image.Resampling.BOX)

    def sample(self, index: int) -> Sample:
        """Sample ``index`` of this split: image, captions (canonical first) and metadata."""
        sc = self.scene(index)
        img = self.render(sc, self.rng(index, stream=2))
        caps = captions_for(sc, self.config.position_captions)
        return Sample(img, caps, sc.meta(), key=f"{self.split}-{index:09d}")

    def object_sample(self, index: int, shape: str, colour: str, size: str | None = None) -> Sample:
        sc = self.object_scene(index, shape, colour, size)
        img = self.render(sc, self.rng(index, stream=3))
        caps = captions_for(sc, self.config.position_captions)
        return Sample(img, caps, sc.meta(), key=f"{self.split}-obj-{index:09d}")


def class_names() -> list[str]:
    """The colour x shape classes of the zero-shot benchmark, e.g. ``"red circle"``."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    pts = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / points
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    fill: tuple[int, ...],
) -> None:
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        m = r * 0.12  # a square of the same "radius" looks bigger than a circle; shrink it
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1 - r * 0.1), (x0, y1 - r * 0.1)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(shape)
