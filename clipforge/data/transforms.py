"""Image transforms for training (augmentation) and inference, built on torchvision v2."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def train_transform(
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: tuple[float, float] = (0.8, 1.0),
    flip: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop (and optional horizontal flip), then normalisation.

    Flip is off by default: it turns "left of" into "right of", silently corrupting
    captions that mention spatial relations.
    """
    ops: list[Callable] = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=scale, ratio=(0.9, 1.1), antialias=True),
    ]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def eval_transform(
    image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shortest side (bicubic), centre crop, normalise: the usual CLIP inference path."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


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
        x = TF.pil_to_tensor(image)
        top, left, ch, cw = self.params(x.shape[-2], x.shape[-1], rnd)
        x = TF.resized_crop(x, top, left, ch, cw, [self.size, self.size], antialias=True)
        if self.flip and rnd.random() < 0.5:
            x = TF.horizontal_flip(x)
        return x


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> normalised ``float32``."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
