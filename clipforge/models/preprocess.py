"""Inference image preprocessing, as the model was trained (and as its peers do it).

The recipe is stored with the model (:class:`~clipforge.models.ModelConfig` ``mean``,
``std``, ``resize_mode``, ``interpolation`` and ``vision.image_size``), so a converted
checkpoint preprocesses the way its source did:

* ``resize_mode="shortest"`` (CLIP): resize the shorter side to ``image_size`` (the other
  side scaled and truncated, as torchvision does), then crop the centre square.
* ``resize_mode="squash"`` (SigLIP): resize to ``image_size x image_size``.

then convert to RGB, scale to [0, 1] and normalise with ``mean``/``std``.

PIL images are resized by PIL (bicubic with antialiasing), which gives exactly OpenCLIP's
``image_transform(..., is_train=False)`` and Hugging Face's PIL image processors. Tensors
(``uint8`` or float in [0, 1], ``[C, H, W]``) are resized by torchvision's tensor kernels,
which give exactly Hugging Face's default (torchvision) image processors; the two routes
differ by at most one 8-bit level per pixel. See ``docs/weights.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from clipforge.errors import ClipforgeError
from clipforge.models.config import ModelConfig

_MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}

ImageLike = Image.Image | torch.Tensor | np.ndarray


class ImageTransform:
    """Callable: one image (PIL, ``[C, H, W]`` tensor or ``[H, W, C]`` uint8 array) to a
    normalised ``float32`` tensor ``[3, size, size]``."""

    def __init__(
        self,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
    ) -> None:
        if resize_mode not in ("shortest", "squash"):
            raise ClipforgeError(f"unknown resize mode {resize_mode!r} (known: shortest, squash)")
        if interpolation not in _MODES:
            raise ClipforgeError(
                f"unknown interpolation {interpolation!r} (known: {', '.join(_MODES)})"
            )
        self.size, self.mean, self.std = size, list(mean), list(std)
        self.resize_mode, self.interpolation = resize_mode, _MODES[interpolation]

    def __call__(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            return self._normalize(TF.pil_to_tensor(self._geometry(image).convert("RGB")))
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ClipforgeError(
                "expected a PIL image, an [H, W, C] uint8 array or a [C, H, W] tensor"
            )
        x = self._geometry(image)
        return self._normalize(x.expand(3, -1, -1) if x.shape[0] == 1 else x)

    def batch(self, images: Iterable[ImageLike]) -> torch.Tensor:
        """Several images stacked into ``[B, 3, size, size]``."""
        return torch.stack([self(im) for im in images])

    def _geometry(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        s = self.size
        if self.resize_mode == "squash":
            return TF.resize(image, [s, s], interpolation=self.interpolation, antialias=True)
        # An int size resizes the shorter side (the longer one is truncated, as in the peers).
        image = TF.resize(image, s, interpolation=self.interpolation, antialias=True)
        return TF.center_crop(image, [s, s])

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # Same operations in the same order as torchvision's ToTensor + Normalize, so that
        # PIL inputs reproduce OpenCLIP's pixels bit for bit.
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        return TF.normalize(x, self.mean, self.std)


def image_transform(cfg: ModelConfig) -> ImageTransform:
    """The inference preprocessing of a model with config ``cfg`` (see the module docs)."""
    return ImageTransform(
        cfg.vision.image_size, cfg.mean, cfg.std, cfg.resize_mode, cfg.interpolation
    )


__all__ = ["ImageTransform", "image_transform"]
