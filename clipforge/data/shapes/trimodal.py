"""A three-modality shapes world: image, caption and a categorical third view.

Sample ``i`` shows one object of colour ``c``; its caption names the object's shape and a
tag number ``n`` but never the colour; the third view is ``(c + n) mod k``. Colour and
tag are drawn independently and uniformly, so the third view is independent of the
image alone and of the caption alone (for any fixed colour, every value is equally
likely, and likewise for any fixed tag) yet determined by the two together: an XOR-like
dependence that pairwise contrastive objectives cannot see and Symile can.

Image and caption still share the shape, so a pairwise model has something to align and
is not trivially broken; it is only blind to the third view.
"""

from __future__ import annotations

from clipforge.data.sample import Sample
from clipforge.data.shapes.scenes import COLOURS, NUMBER_WORDS, SHAPES, article
from clipforge.data.shapes.world import ShapesWorld
from clipforge.errors import ClipforgeError

COLOUR_NAMES = tuple(COLOURS)


class TriModalShapes:
    """``TriModalShapes(16, split="train", categories=8).sample(i)``: a seeded triple.

    ``meta["third"]`` holds the third view (an int in ``[0, categories)``) and
    ``meta["colour"]``/``meta["tag"]`` the two factors it is made of. Like
    :class:`ShapesWorld`, samples are a pure function of ``(seed, split, index)``.
    """

    def __init__(
        self, image_size: int = 16, split: str = "train", seed: int = 0, categories: int = 8
    ) -> None:
        if not 2 <= categories <= len(COLOUR_NAMES):
            raise ClipforgeError(
                f"the trimodal shapes world has 2 to {len(COLOUR_NAMES)} categories, "
                f"got {categories}"
            )
        self.world = ShapesWorld(image_size, split=split, seed=seed)
        self.categories = categories

    def factors(self, index: int) -> tuple[int, int, str]:
        """(colour index, tag number, shape) of sample ``index``."""
        rng = self.world.rng(index, stream=7)  # a stream ShapesWorld itself does not use
        k = self.categories
        return rng.randrange(k), rng.randrange(k), rng.choice(SHAPES)

    def sample(self, index: int) -> Sample:
        colour, tag, shape = self.factors(index)
        obj = self.world.object_sample(index, shape, COLOUR_NAMES[colour])
        word = NUMBER_WORDS[tag]
        texts = [f"{article(shape)} {shape} with tag {word}", f"tag {word}: {shape}"]
        meta = {
            "third": (colour + tag) % self.categories,
            "colour": colour,
            "tag": tag,
            "shape": shape,
        }
        return Sample(obj.image, texts, meta, key=f"{self.world.split}-tri-{index:09d}")
