"""Model architecture configs and the named presets."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.ranges import count, count0, integers, positive
from clipforge.registry import Registry


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = option(224, check=count)
    patch_size: int = option(32, check=count)
    width: int = option(768, check=count)
    layers: int = option(12, check=count)
    heads: int = option(12, check=count)
    mlp_ratio: float = option(4.0, check=positive)
    pool: str = "cls"  # "cls" (class token), "mean" (mean of patch tokens), "map" (attention pool)
    # pool "grid": the mean of all patch tokens and of each cell of a pool_grid x pool_grid
    # partition, concatenated before the projection, so where a feature is stays linear.
    pool_grid: int = option(2, check=count)
    pre_norm: bool = True  # LayerNorm after patch embedding (OpenAI CLIP's ln_pre)
    # The fields below let converted peer models (SigLIP) be expressed; defaults are CLIP's.
    class_token: bool = True  # SigLIP has none: positions cover the patches only
    patch_bias: bool = False  # SigLIP's patch embedding has a bias
    proj_type: str = "linear"  # "linear" or "none" (SigLIP: pooled width is the embedding)
    proj_bias: bool = False
    norm_eps: float = option(1e-5, check=positive)  # LayerNorm epsilon (SigLIP: 1e-6)
    stem: str = "patch"  # "patch" (one strided conv, as CLIP) or "conv" (3x3 convolutions)
    pos_init: str = "random"  # "random" or "sincos" (2-D sine-cosine start, still learned)
    # > 0: add a second-order pooled term of this rank over the patch tokens, which keeps
    # which features share a token (colour with shape; models/bilinear.py).
    bilinear: int = option(0, check=count0)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = option(77, check=integers(2))
    vocab_size: int = option(49408, check=integers(2))
    width: int = option(512, check=count)
    layers: int = option(12, check=count)
    heads: int = option(8, check=count)
    mlp_ratio: float = option(4.0, check=positive)
    # The fields below let converted peer models (SigLIP) be expressed; defaults are CLIP's.
    causal: bool = True  # SigLIP's text attention is bidirectional
    pool: str = "argmax"  # "argmax" (end token = largest id) or "last" (last position, SigLIP)
    proj_bias: bool = False  # SigLIP's text head has a bias
    norm_eps: float = option(1e-5, check=positive)
    # "learned" (a position table, CLIP's) or "rope" (rotary positions in attention, no
    # table: contexts longer than trained run too).
    pos: str = "learned"
    # > 0: no text transformer; captions arrive as pre-computed embeddings of this width
    # (meta text_embedding) and only a projection trains (LLM2CLIP, models/external_text.py).
    external_dim: int = option(0, check=count0)
    rope_base: float = option(10000.0, check=positive)  # rotary frequency base
    # > 0: add a second-order pooled term of this rank over the caption's tokens, which
    # keeps which words share a token (an adjective with its noun; models/bilinear.py).
    bilinear: int = option(0, check=count0)


@dataclass(frozen=True)
class ModelConfig:
    """A dual-encoder architecture.

    ``act`` is ``gelu``, ``quick_gelu`` (OpenAI's) or ``gelu_tanh`` (SigLIP's). ``mean``,
    ``std``, ``resize_mode`` (``shortest``: resize the short side and centre crop, or
    ``squash``: resize to a square) and ``interpolation`` describe inference preprocessing
    (see :mod:`clipforge.models.preprocess`). ``logit_scale_max`` caps ``exp(logit_scale)``
    (``None``: no cap, as SigLIP was trained).
    """

    embed_dim: int = option(512, check=count)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    act: str = "gelu"
    # Image normalisation stored with the model so a loaded checkpoint preprocesses as trained.
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    logit_scale_max: float | None = option(100.0, check=positive)
    # Mixture-of-experts MLPs in every block (``clipforge upcycle``, clipforge/models/moe.py):
    # this many experts, each token routed to the top ``moe_top_k``; 0 = dense MLPs.
    moe_experts: int = option(0, check=count0)
    moe_top_k: int = option(2, check=count)

    def validate(self) -> None:
        # Every number against the range it declares, named as the user writes it: a
        # model-args override (vision.layers), not a train flag.
        for prefix, part in (("", self), ("vision.", self.vision), ("text.", self.text)):
            for f in fields(part):
                rng, value = f.metadata.get("check"), getattr(part, f.name)
                if rng is not None and value is not None:
                    rng.check(value, f"model arg {prefix}{f.name}")
        v = self.vision
        if v.image_size % v.patch_size:
            raise ClipforgeError(
                f"image size {v.image_size} is not divisible by patch size {v.patch_size}"
            )
        for name, tower in (("vision", v), ("text", self.text)):
            if tower.heads < 1 or tower.width < 1:
                raise ClipforgeError(
                    f"{name} tower needs width >= 1 and heads >= 1, got {tower.width}/{tower.heads}"
                )
            if tower.width % tower.heads:
                raise ClipforgeError(
                    f"{name} width {tower.width} is not divisible by its {tower.heads} heads"
                )
        if v.pos_init not in ("random", "sincos"):
            raise ClipforgeError(f"unknown vision pos_init {v.pos_init!r} (known: random, sincos)")
        if v.stem not in ("patch", "conv"):
            raise ClipforgeError(f"unknown vision stem {v.stem!r} (known: patch, conv)")
        if v.stem == "conv" and (v.patch_size & (v.patch_size - 1) or v.patch_size < 2):
            raise ClipforgeError(f"a conv stem needs a power-of-two patch size, got {v.patch_size}")
        if v.pool not in ("cls", "mean", "map", "grid"):
            raise ClipforgeError(f"unknown vision pooling {v.pool!r} (known: cls, mean, map, grid)")
        if v.pool == "grid" and (v.pool_grid < 1 or (v.image_size // v.patch_size) % v.pool_grid):
            raise ClipforgeError(
                f"vision.pool_grid {v.pool_grid} must divide the token grid "
                f"{v.image_size // v.patch_size}"
            )
        if v.pool == "cls" and not v.class_token:
            raise ClipforgeError("vision pooling 'cls' needs vision.class_token=true")
        if v.proj_type not in ("linear", "none"):
            raise ClipforgeError(f"unknown vision projection {v.proj_type!r} (known: linear, none)")
        if v.proj_type == "none" and v.width != self.embed_dim:
            raise ClipforgeError(
                f"vision.proj_type 'none' needs vision width {v.width} == embed_dim {self.embed_dim}"
            )
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ClipforgeError(
                f"moe_top_k {self.moe_top_k} exceeds the {self.moe_experts} experts"
            )
        if self.text.pos not in ("learned", "rope"):
            raise ClipforgeError(f"unknown text pos {self.text.pos!r} (known: learned, rope)")
        if self.text.pos == "rope" and (self.text.width // self.text.heads) % 2:
            raise ClipforgeError(
                f"text.pos=rope needs an even head width, got {self.text.width // self.text.heads}"
            )
        if self.text.pool not in ("argmax", "last"):
            raise ClipforgeError(f"unknown text pooling {self.text.pool!r} (known: argmax, last)")
        if self.act not in ("gelu", "quick_gelu", "gelu_tanh"):
            raise ClipforgeError(
                f"unknown activation {self.act!r} (known: gelu, quick_gelu, gelu_tanh)"
            )
        if self.resize_mode not in ("shortest", "squash"):
            raise ClipforgeError(
                f"unknown resize mode {self.resize_mode!r} (known: shortest, squash)"
            )
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ClipforgeError(
                f"unknown interpolation {self.interpolation!r} (known: bicubic, bilinear)"
            )

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
                    cfg, **{head: replace(sub, **{rest: _coerce(type(sub), rest, value, key)})}
                )
            else:
                names = {f.name: f for f in fields(cfg)}
                if key not in names or key in ("vision", "text"):
                    raise ClipforgeError(f"unknown model field {key!r}")
                cfg = replace(cfg, **{key: _coerce(ModelConfig, key, value, key)})
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


def _coerce(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` as the type of field ``name`` of ``cls``, by the one config converter."""
    from clipforge.config import parse_value

    if not isinstance(value, str):
        return value
    return parse_value(typing.get_type_hints(cls)[name], value, key)


PRESETS: Registry[ModelConfig] = Registry("model preset")

PRESETS.add(
    "tiny",
    ModelConfig(
        embed_dim=128,
        # Conv stem, 2-D sine-cosine position init and mean pooling: with plain patches,
        # random positions and a class token, shape stays at chance for ~50k samples and
        # the default run misses its target (see README, Results).
        vision=VisionConfig(
            image_size=32,
            patch_size=4,
            width=128,
            layers=4,
            heads=4,
            stem="conv",
            pos_init="sincos",
            pool="mean",
        ),
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
