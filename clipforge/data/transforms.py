"""Training augmentation on torchvision v2 functionals (inference: ``models.preprocess``)."""

from __future__ import annotations

import math
import random

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF


class SeededCrop:
    """Random resized crop (+ optional flip) of a PIL image to a ``uint8`` tensor.

    Its randomness comes from the ``random.Random`` passed per call, not from torch's
    global generator, so a sample's augmentation is a function of its own seed only, and
    conversion to float and normalisation can run once per batch (:func:`normalize`).
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        flip: bool = False,
    ) -> None:
        self.size = image_size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.flip = flip

    def params(self, h: int, w: int, rnd: random.Random) -> tuple[int, int, int, int]:
        area = h * w
        for _ in range(10):
            target = area * rnd.uniform(*self.scale)
            aspect = math.exp(rnd.uniform(*self.log_ratio))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return rnd.randint(0, h - ch), rnd.randint(0, w - cw), ch, cw
        side = min(h, w)  # fall back to a centre crop
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, image: Image.Image, rnd: random.Random) -> torch.Tensor:
        return self.apply(image, rnd)[0]

    def apply(
        self, image: Image.Image, rnd: random.Random
    ) -> tuple[torch.Tensor, tuple[int, int, int, int, bool]]:
        """The crop and where it came from: ``(top, left, height, width, flipped)`` in
        pixels of ``image`` (to move boxes with the pixels). Draws what ``__call__`` does."""
        x = TF.pil_to_tensor(image)
        top, left, ch, cw = self.params(x.shape[-2], x.shape[-1], rnd)
        x = TF.resized_crop(x, top, left, ch, cw, [self.size, self.size], antialias=True)
        flipped = bool(self.flip and rnd.random() < 0.5)
        if flipped:
            x = TF.horizontal_flip(x)
        return x, (top, left, ch, cw, flipped)


def crop_box(
    box: tuple[float, float, float, float], crop: tuple[int, int, int, int, bool]
) -> tuple[float, float, float, float]:
    """A pixel box ``(x0, y0, x1, y1)`` of the source image in the coordinates of a crop
    from :meth:`SeededCrop.apply`, as fractions of the crop's side (may leave ``[0, 1]``)."""
    top, left, ch, cw, flipped = crop
    x0, y0, x1, y1 = (
        (box[0] - left) / cw,
        (box[1] - top) / ch,
        (box[2] - left) / cw,
        (box[3] - top) / ch,
    )
    if flipped:
        x0, x1 = 1 - x1, 1 - x0
    return x0, y0, x1, y1


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> normalised ``float32``."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
