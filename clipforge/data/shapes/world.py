"""The generator: seeded scenes of the shapes world, rendered, with their captions."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

from clipforge.data.sample import Sample
from clipforge.data.shapes.captions import captions_for, long_caption, without_colour
from clipforge.data.shapes.scenes import (
    COLOUR_NAMES,
    COLOURS,
    COUNT_RADIUS,
    OOD_COLOURS,
    SHAPES,
    SIZE_NAMES,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    relation_of,
)
from clipforge.data.shapes.twins import check_twin_kinds, twin_scene
from clipforge.errors import ClipforgeError


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator. The defaults are the data set clipforge trains on by default."""

    image_size: int = 64
    count_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)  # P(1 object), P(2), P(3), P(4)
    group_prob: float = 0.5  # of multi-object scenes, how many are n copies of one object
    supersample: int = 4  # render larger and downsample, for anti-aliased edges
    position_captions: bool = False  # add captions naming where objects are (see captions_for)
    # Keep only the captions of single and two-object scenes that say where things are
    # (implies position_captions): a relation-focused caption set.
    spatial_only: bool = False
    # The colours scenes draw from (names of COLOURS or OOD_COLOURS); empty: COLOURS. A
    # palette of held-out colours is a domain shift for fine-tuning experiments: new
    # pixels and new words in the captions.
    colours: tuple[str, ...] = ()
    # The share of scenes (a seeded draw per scene) whose only caption is the
    # multi-sentence description of long_caption: long text for Long-CLIP fine-tuning.
    long_captions: float = 0.0
    # The share of multi-object scenes at even indices whose next sample (the odd index
    # after) is their counterfactual twin (:mod:`.twins`): the same scene with two colours
    # exchanged or mirrored, with its own captions. Consecutive samples share a batch, so
    # each twin is an in-batch negative that only binding can tell apart.
    twins: float = 0.0
    twin_kinds: tuple[str, ...] = ("attribute", "relation")
    # Twins start at this sample index: a curriculum that lets a run learn colours and
    # shapes first (at batch B, index k * B is step k).
    twins_from: int = 0
    # The loss weight of a twin and of the scene it follows (``Sample.meta["weight"]``,
    # the per-sample weights path): below 1, the pair teaches binding more gently than
    # a fresh scene teaches colours and shapes.
    twin_weight: float = 1.0
    # The share of single-object and group scenes (a seeded draw per scene) captioned
    # without their colour words ("a small circle", "three squares"): captions only the
    # shape can match, so a run cannot fit them by colour alone, as it can every other.
    colourless: float = 0.0


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
        unknown = [c for c in cfg.colours if c not in COLOURS and c not in OOD_COLOURS]
        if unknown:
            known = ", ".join([*COLOURS, *OOD_COLOURS])
            raise ClipforgeError(f"unknown shapes colours {', '.join(unknown)} (known: {known})")
        if not 0.0 <= cfg.twins <= 1.0:
            raise ClipforgeError(f"shapes twins is a share in [0, 1], got {cfg.twins}")
        if not 0.0 < cfg.twin_weight <= 1.0:
            raise ClipforgeError(f"shapes twin_weight is in (0, 1], got {cfg.twin_weight}")
        if not 0.0 <= cfg.colourless <= 1.0:
            raise ClipforgeError(f"shapes colourless is a share in [0, 1], got {cfg.colourless}")
        if cfg.twins_from < 0:
            raise ClipforgeError(f"shapes twins_from is a sample index, got {cfg.twins_from}")
        check_twin_kinds(tuple(cfg.twin_kinds))
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
        self,
        rng: random.Random,
        sizes: list[str],
        boxes: list[tuple[float, ...]],
        radius: float | None = None,
    ) -> list[tuple[float, float, float, float]] | None:
        s = self.image_size
        out: list[tuple[float, float, float, float]] = []
        for size in sizes:
            r = (radius if radius is not None else SIZES[size]) * s * rng.uniform(0.9, 1.1)
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
        palette = cfg.colours or COLOUR_NAMES
        while True:
            n = rng.choices(counts, weights=cfg.count_weights)[0]
            if n == 1:
                kind = "single"
            elif rng.random() < cfg.group_prob:
                kind = "group"
            else:
                kind = "pair" if n == 2 else "many"
            if kind == "group":
                attrs = [(rng.choice(SHAPES), rng.choice(palette), rng.choice(SIZE_NAMES))] * n
            else:
                attrs = [
                    (rng.choice(SHAPES), rng.choice(palette), rng.choice(SIZE_NAMES))
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
        size = size or rng.choice(SIZE_NAMES)
        boxes = self._place(rng, [size], [])
        assert boxes is not None  # one object always fits
        bg = (rng.randint(10, 59), rng.randint(10, 59), rng.randint(10, 59))
        obj = ShapeObject(shape, colour, size, boxes[0])  # type: ignore[arg-type]
        return Scene([obj], "single", bg, image_size=self.image_size)

    def count_scene(self, index: int, n: int, shape: str, colour: str) -> Scene:
        """``n`` (up to ten) small copies of one object, for counting benchmarks."""
        if not 1 <= n <= 10:
            raise ClipforgeError(f"count scenes hold 1 to 10 objects, got {n}")
        rng = self.rng(index, stream=4)
        while True:
            boxes = self._place(rng, ["small"] * n, [], radius=COUNT_RADIUS)
            if boxes is not None:
                break
        bg = (rng.randint(10, 59), rng.randint(10, 59), rng.randint(10, 59))
        objects = [ShapeObject(shape, colour, "small", b) for b in boxes]
        return Scene(objects, "group", bg, image_size=self.image_size)

    # -- rendering ----------------------------------------------------------------------
    def render(self, scene: Scene, rng: random.Random | None = None) -> Image.Image:
        """Draw a scene as an RGB image of ``image_size`` pixels."""
        k = self.config.supersample
        s = self.image_size * k
        img = Image.new("RGB", (s, s), scene.background)
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            fill = COLOURS[o.colour] if o.colour in COLOURS else OOD_COLOURS[o.colour]
            if rng is not None:  # slight colour jitter so colours are bands, not points
                fill = tuple(min(255, max(0, round(v + rng.gauss(0, 8)))) for v in fill)
            x0, y0, x1, y1 = (v * k for v in o.box)
            _draw_shape(draw, o.shape, x0, y0, x1, y1, fill)
        return img.resize((self.image_size, self.image_size), Image.Resampling.BOX)

    def twin(self, index: int, base: Scene | None = None) -> Scene | None:
        """The counterfactual twin that replaces scene ``index`` (odd indices only, with
        ``ShapesConfig.twins``), or None: the scene is then ``scene(index)``. ``base`` is
        ``scene(index - 1)`` where the caller already drew it."""
        cfg = self.config
        if cfg.twins <= 0 or index % 2 == 0 or index < cfg.twins_from:
            return None
        rng = self.rng(index - 1, stream=6)
        if rng.random() >= cfg.twins:
            return None
        base = base or self.scene(index - 1)
        return twin_scene(base, rng.choice(cfg.twin_kinds), rng)

    def sample(self, index: int) -> Sample:
        """Sample ``index`` of this split: image, captions (canonical first) and metadata."""
        twin = self.twin(index)
        sc = twin or self.scene(index)
        img = self.render(sc, self.rng(index, stream=2))
        caps = self._captions(sc)
        if self.config.long_captions and self.rng(index, 5).random() < self.config.long_captions:
            caps = [long_caption(sc, self.image_size)]
        elif (
            self.config.colourless
            and sc.kind in ("single", "group")
            and self.rng(index, 7).random() < self.config.colourless
        ):
            caps = [without_colour(c, sc.objects[0].colour) for c in caps]
        meta = sc.meta()
        weight = self.config.twin_weight
        if weight != 1.0:  # only then is it worth drawing the next sample's twin
            followed = index % 2 == 0 and self.twin(index + 1, base=sc) is not None
            if twin is not None or followed:
                meta["weight"] = weight
        return Sample(img, caps, meta, key=f"{self.split}-{index:09d}")

    def object_sample(self, index: int, shape: str, colour: str, size: str | None = None) -> Sample:
        sc = self.object_scene(index, shape, colour, size)
        img = self.render(sc, self.rng(index, stream=3))
        caps = self._captions(sc)
        return Sample(img, caps, sc.meta(), key=f"{self.split}-obj-{index:09d}")

    def _captions(self, scene: Scene) -> list[str]:
        cfg = self.config
        caps = captions_for(scene, cfg.position_captions or cfg.spatial_only)
        if not cfg.spatial_only or scene.kind not in ("single", "pair"):
            return caps
        if scene.kind == "single":
            return caps[-1:]  # the position caption
        # Canonical relation, its short form, the inverse phrasing, the position captions.
        return [caps[0], caps[1], caps[2], *caps[-2:]]


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
    elif shape == "hexagon":
        pts = [
            (cx + r * math.cos(math.pi / 3 * i), cy + r * math.sin(math.pi / 3 * i))
            for i in range(6)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(shape)
