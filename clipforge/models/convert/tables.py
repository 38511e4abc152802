"""Tensor name tables: clipforge names <-> OpenAI/OpenCLIP and Hugging Face names.

Each row is ``(clipforge name, peer name(s), how)``:

* ``how == ""``: the same tensor under another name.
* ``how == "T"``: the peer stores the transpose (OpenAI keeps projections as ``x @ W``
  matrices, clipforge as ``nn.Linear`` weights).
* ``how == "cat"``: the peer splits one clipforge tensor into several along dim 0
  (Hugging Face keeps separate q/k/v projections, clipforge one fused ``qkv``).
* ``how == "[1]"``: the peer stores a scalar as a 1-element vector (SigLIP's logit scale).
* ``how == "patch"`` / ``"grid"`` (reading only): SigLIP 2's linear patch embedding
  becomes the patch convolution, and its square position grid is resized to the model's
  (:mod:`clipforge.models.convert.naflex`).
* A row whose third item is a list is a per-block sub-table: its two names are prefixes
  with an ``{i}`` that runs over the tower's blocks.

A table lists every tensor a format *can* hold. :func:`expand` keeps the rows whose
clipforge name the actual model has, so optional parts (a pre-norm, a logit bias, an
attention-pool head) need no branches here.
"""

from __future__ import annotations

from collections.abc import Iterable

from clipforge.models.config import ModelConfig

Row = tuple[str, str | tuple[str, ...], str | list["Row"]]
"""One table row (see the module docstring)."""

FlatRow = tuple[str, tuple[str, ...], str]
"""A row after expansion: one clipforge tensor, its peer tensor(s), the transform."""


def _wb(ours: str, theirs: str) -> list[Row]:
    """The weight and bias rows of a layer (LayerNorm or Linear) renamed as is."""
    return [(f"{ours}.weight", f"{theirs}.weight", ""), (f"{ours}.bias", f"{theirs}.bias", "")]


# --- OpenAI CLIP and OpenCLIP (their native ViT + text transformer) -------------------

OPENAI_BLOCK: list[Row] = [
    *_wb("norm1", "ln_1"),
    ("attn.qkv.weight", "attn.in_proj_weight", ""),
    ("attn.qkv.bias", "attn.in_proj_bias", ""),
    *_wb("attn.proj", "attn.out_proj"),
    *_wb("norm2", "ln_2"),
    *_wb("mlp.fc1", "mlp.c_fc"),
    *_wb("mlp.fc2", "mlp.c_proj"),
]

OPENAI_VISION: list[Row] = [
    ("visual.patch_embed.weight", "visual.conv1.weight", ""),
    ("visual.patch_embed.bias", "visual.conv1.bias", ""),
    ("visual.class_embedding", "visual.class_embedding", ""),
    ("visual.pos_embed", "visual.positional_embedding", ""),
    *_wb("visual.norm_pre", "visual.ln_pre"),
    ("visual.transformer.blocks.{i}.", "visual.transformer.resblocks.{i}.", OPENAI_BLOCK),
    *_wb("visual.norm_post", "visual.ln_post"),
    ("visual.proj.weight", "visual.proj", "T"),
]


def openclip_table(cfg: ModelConfig, text_prefix: str = "") -> list[Row]:
    """OpenAI's layout, which OpenCLIP's ``CLIP`` keeps.

    OpenCLIP's ``CustomTextCLIP`` nests the text tower under ``text.`` (``text_prefix``),
    and a text projection with bias is an ``nn.Linear`` there rather than a matrix.
    """
    t = text_prefix
    if cfg.text.proj_bias:
        text_proj: list[Row] = _wb("text.proj", f"{t}text_projection")
    else:
        text_proj = [("text.proj.weight", f"{t}text_projection", "T")]
    return [
        *OPENAI_VISION,
        ("text.token_embed.weight", f"{t}token_embedding.weight", ""),
        ("text.pos_embed", f"{t}positional_embedding", ""),
        ("text.transformer.blocks.{i}.", f"{t}transformer.resblocks.{{i}}.", OPENAI_BLOCK),
        *_wb("text.norm_final", f"{t}ln_final"),
        *text_proj,
        ("logit_scale", "logit_scale", ""),
        ("logit_bias", "logit_bias", ""),
    ]


# Peer tensors that are not weights: OpenAI's TorchScript archives carry the model's
# hyper-parameters as tensors, and the causal mask is a (non-persistent) buffer.
OPENCLIP_IGNORED = ("input_resolution", "context_length", "vocab_size", "*attn_mask")


# --- Hugging Face transformers: CLIPModel and SiglipModel ------------------------------

HF_BLOCK: list[Row] = [
    *_wb("norm1", "layer_norm1"),
    (
        "attn.qkv.weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "cat",
    ),
    (
        "attn.qkv.bias",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
        "cat",
    ),
    *_wb("attn.proj", "self_attn.out_proj"),
    *_wb("norm2", "layer_norm2"),
    *_wb("mlp.fc1", "mlp.fc1"),
    *_wb("mlp.fc2", "mlp.fc2"),
]

HF_TEXT: list[Row] = [
    ("text.token_embed.weight", "text_model.embeddings.token_embedding.weight", ""),
    ("text.pos_embed", "text_model.embeddings.position_embedding.weight", ""),
    ("text.transformer.blocks.{i}.", "text_model.encoder.layers.{i}.", HF_BLOCK),
    *_wb("text.norm_final", "text_model.final_layer_norm"),
]

HF_CLIP: list[Row] = [
    ("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight", ""),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", ""),
    ("visual.pos_embed", "vision_model.embeddings.position_embedding.weight", ""),
    *_wb("visual.norm_pre", "vision_model.pre_layrnorm"),  # sic: HF's spelling
    ("visual.transformer.blocks.{i}.", "vision_model.encoder.layers.{i}.", HF_BLOCK),
    *_wb("visual.norm_post", "vision_model.post_layernorm"),
    ("visual.proj.weight", "visual_projection.weight", ""),
    *HF_TEXT,
    ("text.proj.weight", "text_projection.weight", ""),
    ("logit_scale", "logit_scale", ""),
]

HF_SIGLIP: list[Row] = [
    *_wb("visual.patch_embed", "vision_model.embeddings.patch_embedding"),
    ("visual.pos_embed", "vision_model.embeddings.position_embedding.weight", ""),
    ("visual.transformer.blocks.{i}.", "vision_model.encoder.layers.{i}.", HF_BLOCK),
    *_wb("visual.norm_post", "vision_model.post_layernorm"),
    ("visual.attn_pool.probe", "vision_model.head.probe", ""),
    ("visual.attn_pool.qkv.weight", "vision_model.head.attention.in_proj_weight", ""),
    ("visual.attn_pool.qkv.bias", "vision_model.head.attention.in_proj_bias", ""),
    *_wb("visual.attn_pool.proj", "vision_model.head.attention.out_proj"),
    *_wb("visual.attn_pool.norm", "vision_model.head.layernorm"),
    *_wb("visual.attn_pool.mlp.fc1", "vision_model.head.mlp.fc1"),
    *_wb("visual.attn_pool.mlp.fc2", "vision_model.head.mlp.fc2"),
    *HF_TEXT,
    *_wb("text.proj", "text_model.head"),
    ("logit_scale", "logit_scale", "[1]"),
    ("logit_bias", "logit_bias", "[1]"),
]

# SigLIP 2 (NaFlex) read at one square size: SigLIP's tensors, but the patch embedding is
# a Linear over flattened patches and the positions are a grid to resize.
HF_SIGLIP2: list[Row] = [
    ("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight", "patch"),
    ("visual.patch_embed.bias", "vision_model.embeddings.patch_embedding.bias", ""),
    ("visual.pos_embed", "vision_model.embeddings.position_embedding.weight", "grid"),
    *HF_SIGLIP[3:],
]

# Older transformers versions saved the position-id buffers with the weights.
HF_IGNORED = ("*.position_ids",)


def expand(table: list[Row], cfg: ModelConfig, ours: Iterable[str]) -> list[FlatRow]:
    """Flatten ``table`` for ``cfg`` (one row per block) and keep the rows ``ours`` has."""
    have = set(ours)
    flat: list[FlatRow] = []
    for mine, theirs, how in table:
        if isinstance(how, list):
            layers = cfg.vision.layers if mine.startswith("visual.") else cfg.text.layers
            assert isinstance(theirs, str)
            for i in range(layers):
                sub = [
                    (mine.format(i=i) + m, _prefixed(theirs.format(i=i), t), h) for m, t, h in how
                ]
                flat.extend(expand(sub, cfg, have))
        elif mine in have:
            flat.append((mine, (theirs,) if isinstance(theirs, str) else tuple(theirs), how))
    return flat


def _prefixed(prefix: str, names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (prefix + names,) if isinstance(names, str) else tuple(prefix + n for n in names)
