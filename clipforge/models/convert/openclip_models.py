"""OpenCLIP's standard model names and their architectures (widths, heads, activation,
context length), so a bare OpenCLIP state dict whose run names its model (``params.txt``:
``model: NAME``) loads with the right head count and activation instead of a guess.

Values are OpenCLIP's ``model_configs`` for its ViT CLIP models (towers clipforge builds;
timm towers, Hugging Face text towers, CoCa, CLIPA, layer scale and the multilingual
'worldwide' tokenizer variants are left out);
``tests/models/test_openclip_archs.py`` checks them against the installed package.
"""

from __future__ import annotations

from typing import Any


def _vit(
    embed: int,
    image: int,
    patch: int,
    layers: int,
    width: int,
    text: tuple[int, int, int],
    head_width: int | None = None,
    mlp_ratio: float | None = None,
    context: int = 77,
    vocab: int = 49408,
) -> dict[str, Any]:
    """One entry as OpenCLIP writes it: ``text`` is (width, heads, layers); fields OpenCLIP
    leaves at its defaults (64-wide heads, MLP ratio 4) stay out, as in its files."""
    vision: dict[str, Any] = {"image_size": image, "layers": layers, "width": width}
    if head_width is not None:
        vision["head_width"] = head_width
    vision["patch_size"] = patch
    if mlp_ratio is not None:
        vision["mlp_ratio"] = mlp_ratio
    t_width, heads, t_layers = text
    return {
        "embed_dim": embed,
        "vision_cfg": vision,
        "text_cfg": {"context_length": context, "vocab_size": vocab, "width": t_width,
                     "heads": heads, "layers": t_layers},
    }  # fmt: skip


# name: _vit(embed, image size, patch, layers, width, (text width, heads, layers), ...)
OPENCLIP_MODELS: dict[str, dict[str, Any]] = {
    'ViT-B-16-plus-240': _vit(640, 240, 16, 12, 896, (640, 10, 12)),
    'ViT-B-16-plus': _vit(640, 224, 16, 12, 896, (640, 10, 12)),
    'ViT-B-16': _vit(512, 224, 16, 12, 768, (512, 8, 12)),
    'ViT-B-32-256': _vit(512, 256, 32, 12, 768, (512, 8, 12)),
    'ViT-B-32-plus-256': _vit(640, 256, 32, 12, 896, (640, 10, 12)),
    'ViT-B-32': _vit(512, 224, 32, 12, 768, (512, 8, 12)),
    'ViT-H-14-378': _vit(1024, 378, 14, 32, 1280, (1024, 16, 24), head_width=80),
    'ViT-H-14': _vit(1024, 224, 14, 32, 1280, (1024, 16, 24), head_width=80),
    'ViT-H-16': _vit(1024, 224, 16, 32, 1280, (1024, 16, 24), head_width=80),
    'ViT-L-14-280': _vit(768, 280, 14, 24, 1024, (768, 12, 12)),
    'ViT-L-14-336': _vit(768, 336, 14, 24, 1024, (768, 12, 12)),
    'ViT-L-14': _vit(768, 224, 14, 24, 1024, (768, 12, 12)),
    'ViT-L-16-320': _vit(768, 320, 16, 24, 1024, (768, 12, 12)),
    'ViT-L-16': _vit(768, 224, 16, 24, 1024, (768, 12, 12)),
    'ViT-M-16': _vit(512, 224, 16, 12, 512, (512, 8, 12)),
    'ViT-M-32-alt': _vit(384, 224, 32, 12, 512, (384, 6, 12)),
    'ViT-M-32': _vit(512, 224, 32, 12, 512, (512, 8, 12)),
    'ViT-S-16-alt': _vit(256, 224, 16, 12, 384, (256, 4, 10)),
    'ViT-S-16': _vit(384, 224, 16, 12, 384, (384, 6, 12)),
    'ViT-S-32-alt': _vit(256, 224, 32, 12, 384, (256, 4, 10)),
    'ViT-S-32': _vit(384, 224, 32, 12, 384, (384, 6, 12)),
    'ViT-bigG-14': _vit(1280, 224, 14, 48, 1664, (1280, 20, 32), head_width=104, mlp_ratio=4.9231),
    'ViT-e-14': _vit(1280, 224, 14, 56, 1792, (1280, 20, 36), head_width=112, mlp_ratio=8.5715),
    'ViT-g-14': _vit(1024, 224, 14, 40, 1408, (1024, 16, 24), head_width=88, mlp_ratio=4.3637),
}  # fmt: skip

# The "-quickgelu" names are the same towers with QuickGELU (OpenAI's activation).
OPENCLIP_MODELS.update(
    {
        f"{name}-quickgelu": {**OPENCLIP_MODELS[name], "quick_gelu": True}
        for name in (
            "ViT-B-16",
            "ViT-B-32",
            "ViT-H-14-378",
            "ViT-H-14",
            "ViT-L-14-336",
            "ViT-L-14",
            "ViT-bigG-14",
        )
    }
)
