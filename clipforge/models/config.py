"""Model architecture configs and the named presets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from clipforge.errors import ClipforgeError
from clipforge.registry import Registry


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    pool: str = "cls"  # "cls" (class token) or "mean" (mean of patch tokens)
    pre_norm: bool = True  # LayerNorm after patch embedding (OpenAI CLIP's ln_pre)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ModelConfig:
    """A dual-encoder architecture. ``act`` is ``gelu`` or ``quick_gelu`` (OpenAI's)."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    act: str = "gelu"
    # Image normalisation stored with the model so a loaded checkpoint preprocesses as trained.
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def validate(self) -> None:
        v = self.vision
        if v.image_size % v.patch_size:
            raise ClipforgeError(
                f"image size {v.image_size} is not divisible by patch size {v.patch_size}"
            )
        for name, tower in (("vision", v), ("text", self.text)):
            if tower.width % tower.heads:
                raise ClipforgeError(
                    f"{name} width {tower.width} is not divisible by its {tower.heads} heads"
                )
        if v.pool not in ("cls", "mean"):
            raise ClipforgeError(f"unknown vision pooling {v.pool!r} (known: cls, mean)")
        if self.act not in ("gelu", "quick_gelu"):
            raise ClipforgeError(f"unknown activation {self.act!r} (known: gelu, quick_gelu)")

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """Return a copy with dotted-key overrides, e.g. ``{"vision.width": 256}``."""
        cfg = self
        for key, value in overrides.items():
            head, _, rest = key.partition(".")
            if rest:
                if head not in ("vision", "text"):
                    raise ClipforgeError(f"unknown model field {key!r}")
                sub = getattr(cfg, head)
                names = {f.name: f for f in fields(sub)}
                if rest not in names:
                    raise ClipforgeError(
                        f"unknown model field {key!r} (known: {', '.join(f'{head}.{n}' for n in names)})"
                    )
                cfg = replace(
                    cfg, **{head: replace(sub, **{rest: _coerce(names[rest].type, value)})}
                )
            else:
                names = {f.name: f for f in fields(cfg)}
                if key not in names or key in ("vision", "text"):
                    raise ClipforgeError(f"unknown model field {key!r}")
                cfg = replace(cfg, **{key: _coerce(names[key].type, value)})
        return cfg

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return ModelConfig(vision=vision, text=text, **d)


def _coerce(type_name: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    t = str(type_name)
    try:
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            return value.lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise ClipforgeError(f"cannot read {value!r} as {t}") from None
    return value


PRESETS: Registry[ModelConfig] = Registry("model preset")

PRESETS.add(
    "tiny",
    ModelConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=32, patch_size=4, width=128, layers=4, heads=4),
        text=TextConfig(context_length=32, width=128, layers=4, heads=4),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
)
PRESETS.add(
    "small",
    ModelConfig(
        embed_dim=256,
        vision=VisionConfig(image_size=64, patch_size=8, width=256, layers=6, heads=4),
        text=TextConfig(context_length=32, width=256, layers=6, heads=4),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
)
# OpenAI CLIP architectures: parameter shapes match the released checkpoints.
PRESETS.add(
    "ViT-B-32",
    ModelConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(context_length=77, width=512, layers=12, heads=8),
        act="quick_gelu",
    ),
)
PRESETS.add(
    "ViT-B-16",
    ModelConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12),
        text=TextConfig(context_length=77, width=512, layers=12, heads=8),
        act="quick_gelu",
    ),
)
PRESETS.add(
    "ViT-L-14",
    ModelConfig(
        embed_dim=768,
        vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
        text=TextConfig(context_length=77, width=768, layers=12, heads=12),
        act="quick_gelu",
    ),
)


def get_model_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The preset ``name`` with optional dotted-key ``overrides``, validated."""
    cfg = PRESETS.get(name)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    cfg.validate()
    return cfg
