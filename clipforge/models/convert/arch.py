"""Architectures: inferred from a peer's tensors and config, and written as peer configs.

Shapes (widths, depths, patch size, image size, context length, vocabulary, embedding
size) always come from the tensors. What tensors cannot tell (attention heads, activation,
LayerNorm epsilon, pooling, preprocessing) comes from the peer's config where there is one:

* Hugging Face folders: ``config.json`` (and ``preprocessor_config.json`` if present).
* OpenCLIP: ``open_clip_config.json`` next to the weights (hub layout), if present.
* Otherwise OpenAI's conventions, as ``open_clip.build_model_from_openai_state_dict``
  assumes them: 64-wide heads, QuickGELU, OpenAI's normalisation. Pass ``overrides``
  (e.g. ``{"act": "gelu"}``) for OpenCLIP-trained weights without a config.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipforge.errors import ClipforgeError
from clipforge.models.config import ModelConfig, TextConfig, VisionConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

# Hugging Face activation names <-> clipforge's.
_HF_ACTS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",  # the same tanh formula, written out
}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values in HF configs


def count_blocks(tensors: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks ``prefix{i}.`` in ``tensors`` (0 if none)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in tensors if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def mlp_ratio_for(hidden: int, width: int) -> float:
    """A float ratio ``r`` with ``int(width * r) == hidden`` (what the blocks compute)."""
    r = hidden / width
    while int(width * r) < hidden:  # hidden/width can round down by one ulp
        r = math.nextafter(r, math.inf)
    return r


def _need(tensors: Mapping[str, torch.Tensor], path: Path, *names: str) -> list[torch.Tensor]:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ClipforgeError(
            f"{path}: cannot infer the architecture, missing tensors: {', '.join(missing)}"
        )
    return [tensors[n] for n in names]


def _grid(n_patches: int, path: Path) -> int:
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ClipforgeError(f"{path}: {n_patches} image positions do not form a square grid")
    return g


# --- OpenAI / OpenCLIP -----------------------------------------------------------------

# OpenCLIP config fields clipforge cannot express, with the value that is harmless.
_OPENCLIP_UNSUPPORTED_VISION = {
    "ls_init_value": None,
    "attentional_pool": False,
    "pos_embed_type": "learnable",
    "timm_model_name": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_OPENCLIP_UNSUPPORTED_TEXT = {
    "ls_init_value": None,
    "embed_cls": False,
    "hf_model_name": None,
    "proj_type": "linear",
    "final_ln_after_pool": False,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}


# What the tensors of an OpenCLIP state dict cannot tell: the number of heads splits the
# same q/k/v matrices any way, and the activation has no weights.
_NOT_IN_TENSORS = ("act", "vision.heads", "text.heads")


def infer_openclip(
    tensors: Mapping[str, torch.Tensor],
    oc_config: dict[str, Any] | None,
    path: Path,
    fmt: str = "openclip",
    model_name: str | None = None,
    given: set[str] | None = None,
) -> ModelConfig:
    """The architecture of an OpenAI-layout (OpenAI CLIP / OpenCLIP ``CLIP``) checkpoint.

    Heads and activation come from ``open_clip_config.json``, else from the run's model
    name (``params.txt``) looked up in :data:`OPENCLIP_MODELS`, else, for OpenAI's own
    files, from OpenAI's conventions (64-wide heads, QuickGELU). A bare OpenCLIP state
    dict without any of these is refused unless ``given`` (the caller's overrides)
    supplies them.
    """
    if oc_config is None and model_name is not None:
        from clipforge.models.convert.openclip_models import OPENCLIP_MODELS

        if model_name not in OPENCLIP_MODELS:
            raise ClipforgeError(
                f"{path}: its run's params.txt names model {model_name!r}, which is not one of "
                f"OpenCLIP's standard architectures clipforge knows; pass --arch or "
                f"--model-args {_flags()}"
            )
        oc_config = {"model_cfg": OPENCLIP_MODELS[model_name]}
    if oc_config is None and fmt != "openai":
        missing = [k for k in _NOT_IN_TENSORS if k not in (given or set())]
        if missing:
            raise ClipforgeError(
                f"{path}: an OpenCLIP state dict without open_clip_config.json or params.txt: "
                f"its head counts and activation cannot be read from the tensors; pass "
                f"--model-args {_flags()} (missing: {', '.join(missing)})"
            )
    if oc_config is not None and not isinstance(oc_config.get("model_cfg"), dict):
        raise ClipforgeError(f"{path}: open_clip_config.json has no model_cfg object")
    mc = oc_config["model_cfg"] if oc_config is not None else None
    vc: dict[str, Any] = (mc or {}).get("vision_cfg", {})
    tc: dict[str, Any] = (mc or {}).get("text_cfg", {})
    for where, cfg, table in (
        ("vision_cfg", vc, _OPENCLIP_UNSUPPORTED_VISION),
        ("text_cfg", tc, _OPENCLIP_UNSUPPORTED_TEXT),
    ):
        odd = [f"{where}.{k}={cfg[k]!r}" for k, ok in table.items() if cfg.get(k, ok) != ok]
        if odd:
            raise ClipforgeError(f"{path}: OpenCLIP options clipforge cannot express: {odd}")

    conv, pos = _need(tensors, path, "visual.conv1.weight", "visual.positional_embedding")
    width, patch = conv.shape[0], conv.shape[-1]
    class_token = "visual.class_embedding" in tensors
    grid = _grid(pos.shape[0] - int(class_token), path)
    v_layers = count_blocks(tensors, "visual.transformer.resblocks.")
    (v_fc,) = _need(tensors, path, "visual.transformer.resblocks.0.mlp.c_fc.weight")
    (v_proj,) = _need(tensors, path, "visual.proj")

    t = "text." if "text.token_embedding.weight" in tensors else ""
    tok, t_pos = _need(tensors, path, f"{t}token_embedding.weight", f"{t}positional_embedding")
    t_width = tok.shape[1]
    t_layers = count_blocks(tensors, f"{t}transformer.resblocks.")
    (t_fc,) = _need(tensors, path, f"{t}transformer.resblocks.0.mlp.c_fc.weight")
    if f"{t}text_projection.weight" in tensors:  # an nn.Linear (with bias) in OpenCLIP
        embed_dim, t_proj_bias = tensors[f"{t}text_projection.weight"].shape[0], True
    else:
        embed_dim, t_proj_bias = _need(tensors, path, f"{t}text_projection")[0].shape[1], False
    if v_proj.shape[1] != embed_dim:
        raise ClipforgeError(
            f"{path}: image and text projections disagree ({v_proj.shape[1]} vs {embed_dim})"
        )

    if mc is None and fmt == "openai":  # OpenAI's own files: its published conventions
        if width % 64 or t_width % 64:
            raise ClipforgeError(
                f"{path}: widths {width}/{t_width} are not multiples of OpenAI's 64-wide heads; "
                f"pass --model-args {_flags()}"
            )
        act, v_heads, t_heads = "quick_gelu", width // 64, t_width // 64
    elif mc is None:  # every field below is overridden by the caller (checked above)
        act, v_heads, t_heads = "gelu", 1, 1
    else:
        v_act_kw = vc.get("act_kwargs") or {}
        t_act_kw = tc.get("act_kwargs") or {}
        if v_act_kw != t_act_kw or set(v_act_kw) - {"approximate"}:
            raise ClipforgeError(f"{path}: unsupported OpenCLIP act_kwargs {v_act_kw}/{t_act_kw}")
        if v_act_kw.get("approximate", "none") == "tanh":
            act = "gelu_tanh"
        else:
            act = "quick_gelu" if mc.get("quick_gelu", False) else "gelu"
        v_heads = width // vc.get("head_width", 64)
        t_heads = tc.get("heads", 8)
    pool = vc.get("pool_type", "tok")
    if pool == "avg" and vc.get("final_ln_after_pool", False):
        v_pool = "mean"
    elif pool == "tok" and not vc.get("final_ln_after_pool", False):
        v_pool = "cls"
    else:
        raise ClipforgeError(
            f"{path}: unsupported OpenCLIP vision pooling {pool!r} "
            f"(final_ln_after_pool={vc.get('final_ln_after_pool', False)})"
        )
    t_pool = tc.get("pool_type", "argmax")
    if t_pool not in ("argmax", "last"):
        raise ClipforgeError(f"{path}: unsupported OpenCLIP text pooling {t_pool!r}")
    pre = (oc_config or {}).get("preprocess_cfg", {})
    return ModelConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            layers=v_layers,
            heads=v_heads,
            mlp_ratio=mlp_ratio_for(v_fc.shape[0], width),
            pool=v_pool,
            pre_norm="visual.ln_pre.weight" in tensors,
            class_token=class_token,
            patch_bias="visual.conv1.bias" in tensors,
            norm_eps=(vc.get("norm_kwargs") or {}).get("eps", 1e-5),
        ),
        text=TextConfig(
            context_length=t_pos.shape[0],
            vocab_size=tok.shape[0],
            width=t_width,
            layers=t_layers,
            heads=t_heads,
            mlp_ratio=mlp_ratio_for(t_fc.shape[0], t_width),
            causal=not tc.get("no_causal_mask", False),
            pool=t_pool,
            proj_bias=t_proj_bias,
            norm_eps=(tc.get("norm_kwargs") or {}).get("eps", 1e-5),
        ),
        act=act,
        mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)),
        resize_mode=pre.get("resize_mode", "shortest"),
        interpolation=pre.get("interpolation", "bicubic"),
    )


def _flags() -> str:
    # The convert command takes them; its output then loads anywhere (eval, --init, ...).
    return (
        "act=gelu|quick_gelu,vision.heads=N,text.heads=N to clipforge convert "
        "(overrides= in clipforge.models.load)"
    )


def openclip_config(cfg: ModelConfig, where: str = "model") -> dict[str, Any]:
    """``open_clip_config.json`` content for ``cfg``; refuses what OpenCLIP's ViT cannot hold."""
    v, t = cfg.vision, cfg.text
    problems = [
        name
        for name, bad in (
            ("no class token", not v.class_token),
            ("attention-pool image head", v.pool == "map"),
            ("grid pooling", v.pool == "grid"),
            ("patch-embedding bias", v.patch_bias),
            ("image projection that is not a bias-free linear", v.proj_type != "linear"),
            ("image projection bias", v.proj_bias),
            ("convolutional stem", getattr(v, "stem", "patch") != "patch"),
            ("second-order (bilinear) pooling", bool(v.bilinear or t.bilinear)),
        )
        if bad
    ]
    if problems:
        raise ClipforgeError(
            f"{where} cannot be written as an OpenCLIP ViT: {', '.join(problems)} "
            "(export SigLIP-style models with --to hf)"
        )
    vision: dict[str, Any] = {
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "width": v.width,
        "layers": v.layers,
        "head_width": v.width // v.heads,
        "mlp_ratio": v.mlp_ratio,
    }
    if not v.pre_norm:
        vision["no_ln_pre"] = True
    if v.pool == "mean":
        vision.update(pool_type="avg", final_ln_after_pool=True)
    text: dict[str, Any] = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    if not t.causal:
        text["no_causal_mask"] = True
    if t.pool != "argmax":
        text["pool_type"] = t.pool
    if t.proj_bias:
        text["proj_bias"] = True
    for tower, eps in ((vision, v.norm_eps), (text, t.norm_eps)):
        if eps != 1e-5:
            tower["norm_kwargs"] = {"eps": eps}
        if cfg.act == "gelu_tanh":
            tower["act_kwargs"] = {"approximate": "tanh"}
    model: dict[str, Any] = {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text}
    if cfg.act == "quick_gelu":
        model["quick_gelu"] = True
    return {
        "model_cfg": model,
        "preprocess_cfg": {
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "interpolation": cfg.interpolation,
            "resize_mode": cfg.resize_mode,
        },
    }


# --- Hugging Face ----------------------------------------------------------------------

_HF_DEFAULTS = {  # transformers' defaults for fields a config.json may leave out
    "clip": {
        "vision": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "text": {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    },
    "siglip": {
        "vision": {
            "num_attention_heads": 12,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        "text": {
            "num_attention_heads": 12,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
    },
}
# SigLIP 2's towers have SigLIP's defaults, and its vision config two fields more.
_HF_DEFAULTS["siglip2"] = {
    "vision": {**_HF_DEFAULTS["siglip"]["vision"], "patch_size": 16, "num_patches": 256,
               "num_channels": 3},
    "text": dict(_HF_DEFAULTS["siglip"]["text"]),
}  # fmt: skip
# Siglip2ImageProcessor's defaults (a folder's preprocessor_config.json may leave them out).
_SIGLIP2_PREPROCESSOR = {"patch_size": 16, "max_num_patches": 256, "resample": 2}
HF_KINDS = ("clip", "siglip", "siglip2")
"""The Hugging Face ``model_type`` values clipforge reads."""


def hf_kind(config: Mapping[str, Any] | None, tensors: Mapping[str, torch.Tensor]) -> str:
    """One of :data:`HF_KINDS` from ``config.json``'s model_type (or the tensors)."""
    if config is not None and config.get("model_type") in HF_KINDS:
        return str(config["model_type"])
    if config is not None and "model_type" in config:
        raise ClipforgeError(
            f"Hugging Face model_type {config['model_type']!r} is not supported "
            f"({', '.join(HF_KINDS)})"
        )
    return "siglip" if "vision_model.head.probe" in tensors else "clip"


def infer_hf(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None,
    preprocessor: Mapping[str, Any] | None,
    path: Path,
    given: set[str] | frozenset[str] = frozenset(),
) -> ModelConfig:
    """The architecture of a Hugging Face ``CLIPModel``, ``SiglipModel`` or
    ``Siglip2Model`` (``given``: the fields the caller overrides)."""
    kind = hf_kind(config, tensors)
    if kind == "siglip2":
        return _infer_siglip2(tensors, config, preprocessor, path, given)
    siglip = kind == "siglip"
    vc = {**_HF_DEFAULTS[kind]["vision"], **((config or {}).get("vision_config") or {})}
    tc = {**_HF_DEFAULTS[kind]["text"], **((config or {}).get("text_config") or {})}
    where = f"{path}/config.json" if path.is_dir() else str(path)

    acts = {_HF_ACTS.get(vc["hidden_act"]), _HF_ACTS.get(tc["hidden_act"])}
    if None in acts or len(acts) != 1:
        raise ClipforgeError(
            f"{where}: unsupported activations {vc['hidden_act']!r}/{tc['hidden_act']!r} "
            f"(supported, the same in both towers: {', '.join(_HF_ACTS)})"
        )
    if siglip and not vc.get("vision_use_head", True):
        raise ClipforgeError(f"{where}: SigLIP without its image head (vision_use_head=false)")

    p = "vision_model."
    conv, pos = _need(
        tensors,
        path,
        f"{p}embeddings.patch_embedding.weight",
        f"{p}embeddings.position_embedding.weight",
    )
    width, patch = conv.shape[0], conv.shape[-1]
    grid = _grid(pos.shape[0] - (0 if siglip else 1), path)
    (v_fc,) = _need(tensors, path, f"{p}encoder.layers.0.mlp.fc1.weight")
    tok, t_pos, t_fc = _need(
        tensors,
        path,
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
    )
    t_width = tok.shape[1]
    if siglip:
        (head,) = _need(tensors, path, "text_model.head.weight")
        embed_dim = head.shape[0]
    else:
        (vproj,) = _need(tensors, path, "visual_projection.weight")
        embed_dim = vproj.shape[0]
        eos = tc.get("eos_token_id", 49407)
        # HF pools at argmax(ids) for the legacy eos id 2, else at the first eos; with the
        # eos as the largest id both are clipforge's argmax pooling.
        if eos not in (2, tok.shape[0] - 1):
            raise ClipforgeError(
                f"{where}: text pooling at eos_token_id {eos} is not supported (clipforge "
                f"pools at the largest id, {tok.shape[0] - 1})"
            )

    pre = dict(preprocessor or {})
    squash = siglip if not pre else not pre.get("do_center_crop", False)
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if siglip else (OPENAI_MEAN, OPENAI_STD)
    return ModelConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            layers=count_blocks(tensors, f"{p}encoder.layers."),
            heads=int(vc["num_attention_heads"]),
            mlp_ratio=mlp_ratio_for(v_fc.shape[0], width),
            pool="map" if siglip else "cls",
            pre_norm=not siglip,
            class_token=not siglip,
            patch_bias=siglip,
            proj_type="none" if siglip else "linear",
            norm_eps=float(vc["layer_norm_eps"]),
        ),
        text=TextConfig(
            context_length=t_pos.shape[0],
            vocab_size=tok.shape[0],
            width=t_width,
            layers=count_blocks(tensors, "text_model.encoder.layers."),
            heads=int(tc["num_attention_heads"]),
            mlp_ratio=mlp_ratio_for(t_fc.shape[0], t_width),
            causal=not siglip,
            pool="last" if siglip else "argmax",
            proj_bias=siglip,
            norm_eps=float(tc["layer_norm_eps"]),
        ),
        act=acts.pop(),
        mean=tuple(pre.get("image_mean", mean)),
        std=tuple(pre.get("image_std", std)),
        resize_mode="squash" if squash else "shortest",
        interpolation=_PIL_RESAMPLE.get(pre.get("resample", 3), "bicubic"),
        # SigLIP's temperature was never capped; CLIP's was, at 100.
        logit_scale_max=None if siglip else 100.0,
    )


def _siglip2_patch(
    tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, path: Path
) -> tuple[int, int]:
    """SigLIP 2's patch size and learned position grid, checked against its tensors."""
    vc = {**_HF_DEFAULTS["siglip2"]["vision"], **((config or {}).get("vision_config") or {})}
    where = f"{path}/config.json" if path.is_dir() else str(path)
    linear, pos = _need(
        tensors,
        path,
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
    )
    patch = vc["patch_size"]
    if not isinstance(patch, int) or isinstance(patch, bool):
        raise ClipforgeError(f"{where}: only square patches are supported, got {patch!r}")
    if vc["num_channels"] != 3:
        raise ClipforgeError(f"{where}: num_channels {vc['num_channels']} (clipforge reads RGB: 3)")
    if linear.ndim != 2 or linear.shape[1] != 3 * patch * patch:
        raise ClipforgeError(
            f"{where}: the patch embedding takes {list(linear.shape)[1:]} inputs, not the "
            f"3 x {patch} x {patch} of patch_size {patch}"
        )
    n = pos.shape[0]
    if vc["num_patches"] != n:
        raise ClipforgeError(f"{where}: num_patches {vc['num_patches']} but {n} learned positions")
    return patch, _grid(n, path)  # transformers reshapes them to a square, as _grid checks


def _infer_siglip2(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None,
    preprocessor: Mapping[str, Any] | None,
    path: Path,
    given: set[str] | frozenset[str],
) -> ModelConfig:
    """A ``Siglip2Model`` (NaFlex) at one square input size.

    SigLIP 2 embeds flattened patches with a linear layer and resizes its square grid of
    learned positions to each image's patch grid; at a fixed square size that is SigLIP's
    model with the linear weight as the patch convolution and the grid resized once
    (:func:`clipforge.models.convert.import_tensors`). The size is what
    ``preprocessor_config.json``'s ``max_num_patches`` gives a square image (256 patches
    of 16: 256 px), or ``vision.image_size`` when the caller overrides it.
    """
    where = f"{path}/config.json" if path.is_dir() else str(path)
    patch, _ = _siglip2_patch(tensors, config, path)
    vision_config = dict((config or {}).get("vision_config") or {})
    if not vision_config.get("vision_use_head", True):
        raise ClipforgeError(f"{where}: SigLIP 2 without its image head (vision_use_head=false)")
    # Every other field matches SigLIP's: the SigLIP reading with the patch embedding
    # stood in by a convolution-shaped tensor and the grid by the source grid.
    width = tensors["vision_model.embeddings.patch_embedding.weight"].shape[0]
    conv_shaped = dict(tensors)
    conv_shaped["vision_model.embeddings.patch_embedding.weight"] = torch.empty(
        (width, 3, patch, patch), device="meta"
    )
    siglip_config = {**dict(config or {}), "model_type": "siglip"}
    siglip_config["vision_config"] = {
        k: v for k, v in vision_config.items() if k not in ("num_patches", "num_channels")
    }
    cfg = infer_hf(conv_shaped, siglip_config, {"resample": 2}, path)

    pre = {**_SIGLIP2_PREPROCESSOR, **dict(preprocessor or {})}
    where_pre = f"{path}/preprocessor_config.json" if path.is_dir() else str(path)
    if pre["patch_size"] != patch:
        raise ClipforgeError(
            f"{where_pre}: patch_size {pre['patch_size']} but the model's patches are {patch}"
        )
    for key, want in (("do_resize", True), ("do_rescale", True), ("do_normalize", True)):
        if pre.get(key, want) is not want:
            raise ClipforgeError(f"{where_pre}: {key}={pre[key]!r} is not supported")
    if abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ClipforgeError(
            f"{where_pre}: rescale_factor {pre['rescale_factor']} is not supported (1/255)"
        )
    if pre["resample"] not in _PIL_RESAMPLE:
        raise ClipforgeError(
            f"{where_pre}: resample {pre['resample']!r} is not supported (2 bilinear, 3 bicubic)"
        )
    side = math.isqrt(int(pre["max_num_patches"]))
    if "vision.image_size" in given:
        side = 1  # replaced by the caller's size; the patch grid it implies is not used
    elif side * side != pre["max_num_patches"]:
        raise ClipforgeError(
            f"{where_pre}: max_num_patches {pre['max_num_patches']} is not a square grid of "
            "patches; choose the square input size with vision.image_size=N "
            "(--model-args), a multiple of the patch size"
        )
    vision = dataclasses.replace(cfg.vision, image_size=side * patch)
    return dataclasses.replace(
        cfg,
        vision=vision,
        mean=tuple(pre.get("image_mean", SIGLIP_MEAN)),
        std=tuple(pre.get("image_std", SIGLIP_STD)),
        resize_mode="squash",
        interpolation=_PIL_RESAMPLE[pre["resample"]],
    )


def hf_kind_of(cfg: ModelConfig, where: str = "model") -> str:
    """Which Hugging Face class can hold ``cfg``: ``"clip"`` or ``"siglip"`` (or refuse)."""
    v, t = cfg.vision, cfg.text
    if v.bilinear or t.bilinear:
        raise ClipforgeError(
            f"{where} cannot be written as a Hugging Face model: its second-order "
            "(bilinear) pooling has no place there"
        )
    clip_like = {
        "patch-embedding stem": getattr(v, "stem", "patch") == "patch",
        "class token": v.class_token,
        "class-token pooling": v.pool == "cls",
        "pre-norm": v.pre_norm,
        "no patch bias": not v.patch_bias,
        "bias-free image projection": v.proj_type == "linear" and not v.proj_bias,
        "causal text": t.causal,
        "argmax text pooling": t.pool == "argmax",
        "bias-free text projection": not t.proj_bias,
    }
    siglip_like = {
        "patch-embedding stem": getattr(v, "stem", "patch") == "patch",
        "no class token": not v.class_token,
        "attention-pool image head": v.pool == "map",
        "no pre-norm": not v.pre_norm,
        "patch bias": v.patch_bias,
        "no image projection": v.proj_type == "none",
        "bidirectional text": not t.causal,
        "last-token text pooling": t.pool == "last",
        "text projection with bias": t.proj_bias,
    }
    if all(clip_like.values()):
        return "clip"
    if all(siglip_like.values()):
        return "siglip"
    lacks = [k for k, ok in clip_like.items() if not ok]
    raise ClipforgeError(
        f"{where} is neither a Hugging Face CLIPModel nor a SiglipModel: for CLIP it lacks "
        f"{', '.join(lacks)}"
    )


def hf_config(cfg: ModelConfig, where: str = "model") -> dict[str, Any]:
    """``config.json`` for a Hugging Face ``CLIPModel`` or ``SiglipModel`` holding ``cfg``."""
    kind = hf_kind_of(cfg, where)
    v, t = cfg.vision, cfg.text
    act = _ACT_TO_HF[cfg.act]
    vision = {
        "hidden_size": v.width,
        "intermediate_size": int(v.width * v.mlp_ratio),
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.heads,
        "num_channels": 3,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": act,
        "layer_norm_eps": v.norm_eps,
    }
    text = {
        "vocab_size": t.vocab_size,
        "hidden_size": t.width,
        "intermediate_size": int(t.width * t.mlp_ratio),
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "max_position_embeddings": t.context_length,
        "hidden_act": act,
        "layer_norm_eps": t.norm_eps,
    }
    if kind == "clip":
        # eos 49407 is CLIP's real end token (the largest id, so HF's first-eos pooling is
        # argmax); for other vocabularies the legacy id 2 makes HF pool at argmax.
        clip_vocab = t.vocab_size == 49408
        eos = 49407 if clip_vocab else 2
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": 2.6592,
            "text_config": {
                "model_type": "clip_text_model",
                **text,
                "projection_dim": cfg.embed_dim,
                "bos_token_id": 49406 if clip_vocab else None,
                "eos_token_id": eos,
                "pad_token_id": 1,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                **vision,
                "projection_dim": cfg.embed_dim,
            },
            "dtype": "float32",
        }
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": {
            "model_type": "siglip_text_model",
            **text,
            "projection_size": cfg.embed_dim,
            # SigLIP's tokenizer pads with its end token </s> (id 1) and has no start token.
            "pad_token_id": 1,
            "bos_token_id": None,
            "eos_token_id": 1,
        },
        "vision_config": {"model_type": "siglip_vision_model", **vision, "vision_use_head": True},
        "dtype": "float32",
    }


def hf_preprocessor_config(cfg: ModelConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` matching ``cfg``'s inference preprocessing."""
    s = cfg.vision.image_size
    common = {
        "do_resize": True,
        "resample": 3 if cfg.interpolation == "bicubic" else 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(cfg.mean),
        "image_std": list(cfg.std),
    }
    if cfg.resize_mode == "squash":
        return {
            "image_processor_type": "SiglipImageProcessor",
            **common,
            "size": {"height": s, "width": s},
        }
    return {
        "image_processor_type": "CLIPImageProcessor",
        **common,
        "size": {"shortest_edge": s},
        "do_center_crop": True,
        "crop_size": {"height": s, "width": s},
        "do_convert_rgb": True,
    }
