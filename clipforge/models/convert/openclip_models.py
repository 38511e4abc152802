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

OPENCLIP_MODELS: dict[str, dict[str, Any]] = {
    "ViT-B-16-plus-240": {
        "embed_dim": 640,
        "vision_cfg": {"image_size": 240, "layers": 12, "width": 896, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 640,
            "heads": 10,
            "layers": 12,
        },
    },
    "ViT-B-16-plus": {
        "embed_dim": 640,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 896, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 640,
            "heads": 10,
            "layers": 12,
        },
    },
    "ViT-B-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
        },
    },
    "ViT-B-32-256": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 256, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
        },
    },
    "ViT-B-32-plus-256": {
        "embed_dim": 640,
        "vision_cfg": {"image_size": 256, "layers": 12, "width": 896, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 640,
            "heads": 10,
            "layers": 12,
        },
    },
    "ViT-B-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
        },
    },
    "ViT-H-14-378": {
        "embed_dim": 1024,
        "vision_cfg": {
            "image_size": 378,
            "layers": 32,
            "width": 1280,
            "head_width": 80,
            "patch_size": 14,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1024,
            "heads": 16,
            "layers": 24,
        },
    },
    "ViT-H-14": {
        "embed_dim": 1024,
        "vision_cfg": {
            "image_size": 224,
            "layers": 32,
            "width": 1280,
            "head_width": 80,
            "patch_size": 14,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1024,
            "heads": 16,
            "layers": 24,
        },
    },
    "ViT-H-16": {
        "embed_dim": 1024,
        "vision_cfg": {
            "image_size": 224,
            "layers": 32,
            "width": 1280,
            "head_width": 80,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1024,
            "heads": 16,
            "layers": 24,
        },
    },
    "ViT-L-14-280": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 280, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 768,
            "heads": 12,
            "layers": 12,
        },
    },
    "ViT-L-14-336": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 768,
            "heads": 12,
            "layers": 12,
        },
    },
    "ViT-L-14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 768,
            "heads": 12,
            "layers": 12,
        },
    },
    "ViT-L-16-320": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 320, "layers": 24, "width": 1024, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 768,
            "heads": 12,
            "layers": 12,
        },
    },
    "ViT-L-16": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 768,
            "heads": 12,
            "layers": 12,
        },
    },
    "ViT-M-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 512, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
        },
    },
    "ViT-M-32-alt": {
        "embed_dim": 384,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 512, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 384,
            "heads": 6,
            "layers": 12,
        },
    },
    "ViT-M-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 512, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
        },
    },
    "ViT-S-16-alt": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 384, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 256,
            "heads": 4,
            "layers": 10,
        },
    },
    "ViT-S-16": {
        "embed_dim": 384,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 384, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 384,
            "heads": 6,
            "layers": 12,
        },
    },
    "ViT-S-32-alt": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 384, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 256,
            "heads": 4,
            "layers": 10,
        },
    },
    "ViT-S-32": {
        "embed_dim": 384,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 384, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 384,
            "heads": 6,
            "layers": 12,
        },
    },
    "ViT-bigG-14": {
        "embed_dim": 1280,
        "vision_cfg": {
            "image_size": 224,
            "layers": 48,
            "width": 1664,
            "head_width": 104,
            "patch_size": 14,
            "mlp_ratio": 4.9231,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1280,
            "heads": 20,
            "layers": 32,
        },
    },
    "ViT-e-14": {
        "embed_dim": 1280,
        "vision_cfg": {
            "image_size": 224,
            "layers": 56,
            "width": 1792,
            "head_width": 112,
            "patch_size": 14,
            "mlp_ratio": 8.5715,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1280,
            "heads": 20,
            "layers": 36,
        },
    },
    "ViT-g-14": {
        "embed_dim": 1024,
        "vision_cfg": {
            "image_size": 224,
            "layers": 40,
            "width": 1408,
            "head_width": 88,
            "patch_size": 14,
            "mlp_ratio": 4.3637,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 1024,
            "heads": 16,
            "layers": 24,
        },
    },
}
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
