"""Inference preprocessing against OpenCLIP's and Hugging Face's, on real photographs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.errors import ClipforgeError
from clipforge.models import ModelConfig, VisionConfig, get_model_config
from clipforge.models.preprocess import ImageTransform, image_transform
from tests.tolerance import reorder_bound

open_clip = pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")

# 512x512, 400x600 (landscape) and 300x451 (odd width): square, wide, and odd crops.
PHOTOS = ("astronaut", "coffee", "chelsea")


def normalise_bound(cfg: ModelConfig) -> float:
    """Two float32 normalisations of one pixel, ours (x / 255, the mean subtracted, the std
    divided) or Hugging Face's ((x - 255 mean) / (255 std)): each rounds at most 5 times,
    mean and std included, every rounding worth at most (1 + mean) / std of the output."""
    return reorder_bound(5, (1 + max(cfg.mean)) / min(cfg.std))


def one_level(cfg: ModelConfig) -> float:
    """One 8-bit level after normalisation with the smallest std: what tensor and PIL
    resizing may differ by (their kernels round differently), and the normalisations'
    rounding."""
    return 1 / 255 / min(cfg.std) + normalise_bound(cfg)


@pytest.fixture(scope="module", params=PHOTOS)
def photo(request: pytest.FixtureRequest) -> Image.Image:
    return Image.fromarray(getattr(skdata, request.param)())


def _cfg(size: int, mode: str, mean=None, std=None) -> ModelConfig:
    base = get_model_config("ViT-B-32")
    extra = {"mean": mean, "std": std} if mean else {}
    return ModelConfig(
        vision=VisionConfig(image_size=size, patch_size=32 if size % 32 == 0 else size // 4),
        resize_mode=mode,
        **{"mean": base.mean, "std": base.std, **extra},
    )


CASES = [
    (224, "shortest", None, None),
    (224, "squash", (0.5,) * 3, (0.5,) * 3),
    (64, "shortest", (0.5,) * 3, (0.25,) * 3),
]


@pytest.mark.parametrize("size, mode, mean, std", CASES)
def test_pil_images_match_openclip_exactly(photo, size, mode, mean, std) -> None:
    cfg = _cfg(size, mode, mean, std)
    ref = open_clip.image_transform(
        size, is_train=False, mean=cfg.mean, std=cfg.std, resize_mode=mode
    )(photo)
    ours = image_transform(cfg)(photo)
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("size, mode, mean, std", CASES)
def test_tensor_images_are_within_one_level(photo, size, mode, mean, std) -> None:
    cfg = _cfg(size, mode, mean, std)
    t = image_transform(cfg)
    from_pil = t(photo)
    from_tensor = t(torch.from_numpy(np.asarray(photo)).permute(2, 0, 1).contiguous())
    diff = (from_pil - from_tensor).abs()
    assert diff.max() <= one_level(cfg)
    assert diff.mean() < 2e-4  # nearly every pixel is identical
    assert torch.equal(t(np.asarray(photo)), from_pil)  # arrays take the PIL route


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_hf_torchvision_processors_match_the_tensor_route(photo, mode: str) -> None:
    # transformers 5's default image processors resize tensors with torchvision.
    transformers = pytest.importorskip("transformers")
    cfg = _cfg(224, mode)
    stats = {"image_mean": list(cfg.mean), "image_std": list(cfg.std)}
    if mode == "shortest":
        proc = transformers.CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, **stats
        )
    else:
        proc = transformers.SiglipImageProcessor(size={"height": 224, "width": 224}, **stats)
    hf = torch.as_tensor(np.asarray(proc(images=photo, return_tensors="pt")["pixel_values"][0]))
    ours = image_transform(cfg)(torch.from_numpy(np.asarray(photo)).permute(2, 0, 1))
    # The same resized pixels, normalised by each in its own order.
    torch.testing.assert_close(ours, hf, rtol=0, atol=normalise_bound(cfg))


def test_rgba_and_grey_images_become_rgb() -> None:
    t = ImageTransform(32, (0.5,) * 3, (0.5,) * 3)
    grey = Image.fromarray(np.full((40, 50), 200, dtype=np.uint8))
    out = t(grey)
    assert out.shape == (3, 32, 32)
    # A flat image resizes to itself; 200 / 255 and the mean subtracted round (values <= 1,
    # doubled by the exact division by 0.5), and the expected value rounds to float32.
    expected = torch.full_like(out, (200 / 255 - 0.5) / 0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=reorder_bound(3, 1.0))
    rgba = Image.fromarray(np.full((40, 50, 4), 255, dtype=np.uint8))
    # 255 / 255 = 1, then 1 - 0.5 and / 0.5 are exact: nothing rounds.
    assert torch.equal(t(rgba), torch.ones(3, 32, 32))
    assert t.batch([grey, rgba]).shape == (2, 3, 32, 32)


def test_loaded_checkpoints_preprocess_as_their_source(tmp_path: Path) -> None:
    # A SigLIP folder says "squash, mean 0.5": the loaded model carries that recipe.
    from clipforge.models import load
    from tests.models.test_convert import hf_siglip_model
    from tests.spiece import add_spiece

    hf_siglip_model().save_pretrained(tmp_path)
    add_spiece(tmp_path)
    cfg = load(tmp_path).cfg
    assert (cfg.resize_mode, cfg.mean, cfg.std) == ("squash", (0.5,) * 3, (0.5,) * 3)
    ramp = np.arange(0, 256, 4, dtype=np.uint8)  # dark on the left, bright on the right
    wide = Image.fromarray(np.tile(ramp[None, :, None], (16, 1, 3)))  # 64 x 16
    out = image_transform(cfg)(wide)
    assert out.shape == (3, 32, 32)
    # Squashing keeps the whole width, so both ends of the ramp survive; a centre crop
    # would keep the middle only.
    assert out[0, :, 0].mean() < -0.9 and out[0, :, -1].mean() > 0.9
    cropped = image_transform(replace(cfg, resize_mode="shortest"))(wide)
    assert cropped[0, :, 0].mean() > -0.6 and cropped[0, :, -1].mean() < 0.6


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(ClipforgeError, match="unknown resize mode 'longest'"):
        ImageTransform(32, (0.5,) * 3, (0.5,) * 3, resize_mode="longest")
    with pytest.raises(ClipforgeError, match=r"expected a PIL image"):
        ImageTransform(32, (0.5,) * 3, (0.5,) * 3)(torch.zeros(4, 8, 8))
