"""The shapes world: a procedural, seeded image-caption data set.

Every image holds 1-4 coloured shapes on a dark background; every image comes with
several captions (different templates and phrasings) and structured metadata (per
object: box, shape, colour, size). Because everything about a scene is known, the
shapes world doubles as clipforge's benchmark: zero-shot classification over colour x
shape, retrieval, counting, relations and attribute binding can all be probed exactly.

Samples are a pure function of ``(seed, split, index)``: sample 1234 of the training
split is the same image on every machine and in every worker, which is what makes a
resumed run continue bit-for-bit. Splits draw from disjoint seed streams.

The package: :mod:`.scenes` (vocabulary, objects, relations), :mod:`.captions`,
:mod:`.world` (the generator and renderer), :mod:`.hardneg` (perturbed captions) and
:mod:`.trimodal` (a third view for three-modality objectives). The benchmark sets built
from it are :mod:`clipforge.eval.shapes_data`.
"""

from clipforge.data.shapes.captions import (
    captions_for,
    class_names,
    count_caption,
    long_caption,
    without_colour,
)
from clipforge.data.shapes.scenes import (
    COLOURS,
    NUMBER_WORDS,
    OOD_COLOURS,
    OOD_SHAPES,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    article,
    place_of,
    plural,
    relation_of,
)
from clipforge.data.shapes.world import ShapesConfig, ShapesWorld

__all__ = [
    "COLOURS", "NUMBER_WORDS", "OOD_COLOURS", "OOD_SHAPES", "SHAPES", "SIZES", "SPLITS",
    "Scene", "ShapeObject", "ShapesConfig", "ShapesWorld", "article", "captions_for",
    "class_names", "count_caption", "long_caption", "place_of", "plural", "relation_of",
    "without_colour",
]  # fmt: skip
