"""Load and export OpenAI, OpenCLIP and Hugging Face CLIP/SigLIP weights, exactly.

Formats clipforge reads (detected from the file, see :func:`detect_format`):

* ``clipforge``: a clipforge checkpoint (``{"model": ..., "model_config": ...}``).
* ``openai``: OpenAI CLIP, as a TorchScript archive or a plain state dict.
* ``openclip``: an OpenCLIP ``CLIP`` state dict (plain, ``{"state_dict": ...}``, with or
  without ``module.`` prefixes, ``.pt``/``.bin``/``.safetensors``), or a folder with
  ``open_clip_config.json``.
* ``hf-clip`` / ``hf-siglip``: a Hugging Face ``CLIPModel`` / ``SiglipModel`` folder
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, sharded or not).
* ``hf-siglip2``: a ``Siglip2Model`` (NaFlex) folder, read for one square input size
  (see :mod:`clipforge.models.convert.naflex`); written back as a ``SiglipModel``.

and writes (:func:`save_checkpoint`): ``clipforge``, ``openclip`` and ``hf``.

Names are mapped by the tables in :mod:`clipforge.models.convert.tables`; every tensor
of the file must be used and every tensor of the model filled, or loading fails with a
:class:`~clipforge.errors.ClipforgeError` that lists the missing and unexpected names.
No code from a checkpoint is run (see :mod:`clipforge.models.convert.files`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoint import atomic_save, heads_payload, model_payload
from clipforge.data.hf_tokenizers import TOKENIZER_FILES, TokenizerSpec
from clipforge.data.tokenizer import clip_bpe_files
from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.config import ModelConfig, get_model_config
from clipforge.models.convert import arch as _arch
from clipforge.models.convert import naflex as _naflex
from clipforge.models.convert import tables as _tables
from clipforge.models.convert.files import RawCheckpoint, read_raw, write_json, write_state_dict
from clipforge.models.lora import apply_adapters, is_adapter_key, merge_lora
from clipforge.outputs import atomic_write

FORMATS = ("clipforge", "openai", "openclip", "hf-clip", "hf-siglip", "hf-siglip2")
"""Formats :func:`read_checkpoint` reads."""

TARGETS = ("clipforge", "openclip", "hf")
"""Formats :func:`save_checkpoint` writes (``hf`` picks CLIPModel or SiglipModel)."""

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass
class Checkpoint:
    """A checkpoint read into clipforge names: its format, architecture and tensors."""

    path: Path
    format: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    heads: dict[str, Any] | None = None  # what a clipforge checkpoint holds of its heads
    tokenizer: TokenizerSpec | None = None  # not CLIP's BPE: the one the model needs


def detect_format(raw: RawCheckpoint) -> str:
    """Which of :data:`FORMATS` ``raw`` is, from its configs and tensor names."""
    keys = raw.tensors.keys()
    if raw.clipforge_config is not None or "visual.patch_embed.weight" in keys:
        return "clipforge"
    if raw.hf_config is not None or "vision_model.embeddings.patch_embedding.weight" in keys:
        return f"hf-{_arch.hf_kind(raw.hf_config, raw.tensors)}"
    if "visual.conv1.weight" in keys:
        openai = raw.container == "torchscript" or "input_resolution" in keys
        return "openai" if openai else "openclip"
    if any(k.startswith("visual.trunk.") for k in keys):
        raise ClipforgeError(
            f"{raw.path}: OpenCLIP models with timm image towers (e.g. its SigLIP ports) are "
            "not supported; convert the Hugging Face version instead"
        )
    if "visual.layer1.0.conv1.weight" in keys:
        raise ClipforgeError(
            f"{raw.path}: ResNet image towers (OpenAI RN50 etc.) are not supported"
        )
    raise ClipforgeError(
        f"{raw.path}: not a CLIP checkpoint clipforge knows (tensors like "
        f"{', '.join(list(keys)[:4])})"
    )


def infer_config(raw: RawCheckpoint, fmt: str, given: Iterable[str] = ()) -> ModelConfig:
    """The architecture of ``raw`` (format ``fmt``) from its tensors and configs.

    ``given`` names the fields the caller will override; what neither the file nor
    ``given`` fixes is refused, never guessed.
    """
    if fmt == "clipforge":
        if raw.clipforge_config is None:
            raise ClipforgeError(
                f"{raw.path}: a clipforge state dict without model_config; pass arch"
            )
        try:
            return ModelConfig.from_dict(raw.clipforge_config)
        except TypeError as e:
            raise ClipforgeError(f"{raw.path}: bad model_config: {e}") from None
    if fmt in ("openai", "openclip"):
        return _arch.infer_openclip(
            raw.tensors, raw.openclip_config, raw.path, fmt, raw.openclip_model, set(given)
        )
    return _arch.infer_hf(raw.tensors, raw.hf_config, raw.hf_preprocessor, raw.path, set(given))


def _rows(
    fmt: str, cfg: ModelConfig, ours: Iterable[str], peer: Mapping[str, Any] | None = None
) -> tuple[list[_tables.FlatRow], tuple[str, ...]]:
    """The expanded name table of ``fmt`` for ``cfg`` and the peer names to ignore."""
    ours = list(ours)
    if fmt == "clipforge":
        return [(k, (k,), "") for k in ours], ()
    if fmt in ("openai", "openclip"):
        # Reading: OpenCLIP's CustomTextCLIP nests the text tower under "text.".
        nested = peer is not None and "text.token_embedding.weight" in peer
        table = _tables.openclip_table(cfg, text_prefix="text." if nested else "")
        return _tables.expand(table, cfg, ours), _tables.OPENCLIP_IGNORED
    tables = {"hf-siglip": _tables.HF_SIGLIP, "hf-siglip2": _tables.HF_SIGLIP2}
    table = tables.get(fmt, _tables.HF_CLIP)
    return _tables.expand(table, cfg, ours), _tables.HF_IGNORED


def _model_shapes(cfg: ModelConfig, logit_bias: bool) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = CLIP(cfg, init_logit_bias=0.0 if logit_bias else None)
    return {k: v.shape for k, v in model.state_dict().items()}


def _names(names: list[str], limit: int = 6) -> str:
    head = ", ".join(names[:limit])
    return head + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def import_tensors(
    tensors: Mapping[str, torch.Tensor], fmt: str, cfg: ModelConfig, where: str | Path
) -> dict[str, torch.Tensor]:
    """Rename and reshape a ``fmt`` state dict into a clipforge state dict for ``cfg``.

    Raises :class:`ClipforgeError` naming the missing, unexpected and mis-shaped tensors.
    """
    shapes = _model_shapes(cfg, logit_bias="logit_bias" in tensors)
    rows, ignored = _rows(fmt, cfg, shapes, tensors)
    unmapped = sorted(set(shapes) - {r[0] for r in rows})  # the format cannot hold them
    missing = [n for _, theirs, _ in rows for n in theirs if n not in tensors] + unmapped
    used = {n for _, theirs, _ in rows for n in theirs}
    unexpected = [
        k
        for k in tensors
        if k not in used and not any(fnmatch.fnmatchcase(k, pat) for pat in ignored)
    ]
    if missing or unexpected:
        parts = [f"missing tensors: {_names(missing)}"] if missing else []
        parts += [f"unexpected tensors: {_names(unexpected)}"] if unexpected else []
        raise ClipforgeError(
            f"{where}: {fmt} checkpoint does not fit {_describe(cfg)}: " + "; ".join(parts)
        )

    out: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for ours, theirs, how in rows:
        parts_ = [tensors[n] for n in theirs]
        x = torch.cat(parts_) if how == "cat" else parts_[0].T if how == "T" else parts_[0]
        if how == "patch":
            x = _naflex.linear_to_conv(x, cfg.vision.patch_size, str(where))
        elif how == "grid":
            x = _naflex.resize_positions(
                x, cfg.vision.image_size // cfg.vision.patch_size, str(where)
            )
        want = shapes[ours]
        if x.shape != want and x.numel() == 1 and math.prod(want) == 1:
            x = x.reshape(want)  # scalars stored as [] or [1]
        if x.shape != want:
            wrong.append(f"{theirs[0]} {list(x.shape)} (model: {list(want)})")
            continue
        out[ours] = (x.float() if x.is_floating_point() else x).contiguous()
    if wrong:
        raise ClipforgeError(
            f"{where}: tensor shapes do not fit {_describe(cfg)}: {_names(wrong, 4)}"
        )
    return out


def export_tensors(
    state_dict: Mapping[str, torch.Tensor], fmt: str, cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """A clipforge state dict for ``cfg`` renamed and reshaped into ``fmt``'s names."""
    rows, _ = _rows(fmt, cfg, state_dict)
    unmapped = sorted(set(state_dict) - {r[0] for r in rows})
    if unmapped:
        raise ClipforgeError(f"{fmt} has no place for these tensors: {_names(unmapped)}")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, how in rows:
        x = state_dict[ours].detach()
        if how == "cat":
            out.update(zip(theirs, x.chunk(len(theirs)), strict=True))
        else:
            out[theirs[0]] = x.T if how == "T" else x.reshape(1) if how == "[1]" else x
    return out


def _describe(cfg: ModelConfig) -> str:
    v, t = cfg.vision, cfg.text
    return (
        f"the architecture (image {v.image_size}px/{v.patch_size} width {v.width} x{v.layers}, "
        f"text width {t.width} x{t.layers}, embed {cfg.embed_dim})"
    )


def _resolve_arch(arch: str | ModelConfig | None) -> ModelConfig | None:
    if arch is None or isinstance(arch, ModelConfig):
        return arch
    return get_model_config(arch)


def read_checkpoint(
    path: str | Path,
    arch: str | ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> Checkpoint:
    """Read any supported checkpoint file or weights folder into clipforge names.

    ``arch`` (a preset name or a :class:`ModelConfig`) replaces the architecture inferred
    from the file; ``overrides`` (dotted keys) adjust either. Models come from
    :func:`clipforge.models.load`, which also resolves run folders.
    """
    raw = read_raw(path)
    fmt = detect_format(raw)
    cfg = _resolve_arch(arch) or infer_config(raw, fmt, overrides or {})
    if overrides:
        cfg = cfg.with_overrides(overrides)
    cfg.validate()
    # LoRA adapters (clipforge names only) pass through beside the mapped tensors.
    adapters = {k: v for k, v in raw.tensors.items() if fmt == "clipforge" and is_adapter_key(k)}
    tensors = {k: v for k, v in raw.tensors.items() if k not in adapters}
    check_tokenizer(raw, fmt, cfg)
    return Checkpoint(
        Path(path),
        fmt,
        cfg,
        {**import_tensors(tensors, fmt, cfg, raw.path), **adapters},
        raw.heads,
        raw.tokenizer,
    )


def check_tokenizer(raw: RawCheckpoint, fmt: str, cfg: ModelConfig | None = None) -> None:
    """Refuse what would tokenize ``raw``'s texts with the wrong vocabulary.

    A Hugging Face SigLIP folder must ship its tokenizer (SigLIP was not trained on CLIP's
    BPE, and no default is right for it), and a tokenizer's ids must fit the text tower
    (of ``cfg``, when given).
    """
    if fmt in ("hf-siglip", "hf-siglip2") and not raw.tokenizer_files:
        looked = ", ".join([*TOKENIZER_FILES, "vocab.json + merges.txt"])
        raise ClipforgeError(
            f"{raw.path}: a Hugging Face SigLIP folder without its text tokenizer (looked "
            f"for {looked}); copy the tokenizer files of the checkpoint it came from into it"
        )
    spec = raw.tokenizer
    if spec is not None and cfg is not None and not cfg.text.external_dim:
        size = spec.build(cfg.text.context_length).vocab_size
        if size > cfg.text.vocab_size:
            raise ClipforgeError(
                f"{raw.path}: its {spec.describe()} has {size} tokens, more than the text "
                f"tower's {cfg.text.vocab_size} embeddings"
            )


def model_from_state_dict(cfg: ModelConfig, state_dict: Mapping[str, torch.Tensor]) -> CLIP:
    """A :class:`CLIP` for ``cfg`` holding ``state_dict`` (clipforge names), in eval mode.

    LoRA adapters in ``state_dict`` (a LoRA run's checkpoint) are merged into the weights
    they adapt, so every reader gets one plain model that computes what was trained.
    """
    base = {k: v for k, v in state_dict.items() if not is_adapter_key(k)}
    adapters = {k: v for k, v in state_dict.items() if is_adapter_key(k)}
    with torch.device("meta"):  # the weights are replaced at once: skip random init
        model = CLIP(cfg, init_logit_bias=0.0 if "logit_bias" in base else None)
    model.load_state_dict(base, strict=True, assign=True)
    if adapters:
        merge_lora(apply_adapters(model, adapters))
    return model.eval()


def writes_folder(out: str | Path, to: str) -> bool:
    """Whether :func:`save_checkpoint` writes ``to`` at ``out`` as a folder (else one file)."""
    if to not in TARGETS:
        raise ClipforgeError(f"unknown target format {to!r} (known: {', '.join(TARGETS)})")
    return to == "hf" or (to == "openclip" and Path(out).suffix not in _WEIGHT_SUFFIXES)


def save_checkpoint(
    model: CLIP, out: str | Path, to: str, *, drop_heads: bool = False
) -> list[Path]:
    """Write ``model`` in format ``to`` (one of :data:`TARGETS`); returns the files written.

    * ``clipforge``: one ``.pt`` file, as the trainer writes (``clipforge eval`` reads it),
      with the model's heads (``model.heads``: a CoCa caption decoder) unless
      ``drop_heads``.
    * ``openclip``: a folder (``open_clip_config.json`` + ``open_clip_model.safetensors``,
      which ``open_clip.create_model("local-dir:OUT")`` loads), or, if ``out`` ends in
      ``.pt``/``.pth``/``.bin``/``.safetensors``, just the state dict.
    * ``hf``: a folder with ``config.json``, ``model.safetensors`` and
      ``preprocessor_config.json`` for ``CLIPModel`` or ``SiglipModel.from_pretrained``.

    ``openclip`` and ``hf`` have no place for heads: a model with heads is refused there
    unless ``drop_heads`` says to write the towers alone.
    """
    out = Path(out)
    cfg = model.cfg
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    heads = {} if drop_heads else dict(model.heads)
    spec = model.tokenizer_spec
    if to == "clipforge":
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({**model_payload(sd, cfg, spec), **heads_payload(heads), "step": 0}, out)
        return [out]
    if to in TARGETS and heads:
        raise ClipforgeError(
            f"the {to} format has no place for the model's {', '.join(sorted(heads))} head; "
            "pass --drop-heads to write the towers alone, or write a clipforge checkpoint"
        )
    if to == "openclip" and spec is not None:
        raise ClipforgeError(
            f"the openclip format has no place for the model's {spec.describe()}; write a "
            "clipforge checkpoint or a Hugging Face folder (--to hf)"
        )
    if to == "openclip":
        oc = _arch.openclip_config(cfg, where=str(out))
        if "logit_bias" in sd:  # OpenCLIP creates the parameter only when given a value
            oc["model_cfg"]["init_logit_bias"] = float(sd["logit_bias"])
        tensors = export_tensors(sd, "openclip", cfg)
        if not writes_folder(out, to):
            write_state_dict(tensors, out)
            return [out]
        write_json(oc, out / "open_clip_config.json")
        write_state_dict(tensors, out / "open_clip_model.safetensors")
        return [out / "open_clip_config.json", out / "open_clip_model.safetensors"]
    if to == "hf":
        config = _arch.hf_config(cfg, where=str(out))
        fmt = f"hf-{config['model_type']}"
        if fmt == "hf-siglip" and "logit_bias" not in sd:
            sd["logit_bias"] = torch.zeros(())  # no bias is a zero bias
        tensors = export_tensors(sd, fmt, cfg)
        write_json(config, out / "config.json")
        write_json(_arch.hf_preprocessor_config(cfg), out / "preprocessor_config.json")
        write_state_dict(tensors, out / "model.safetensors")
        written = [out / "config.json", out / "preprocessor_config.json", out / "model.safetensors"]
        # The tokenizer goes with the weights, so the folder tokenizes as the model did:
        # its own (a SigLIP checkpoint's), else CLIP's BPE in CLIPTokenizer's files.
        files = spec.hf_files() if spec is not None else {
            **clip_bpe_files(),
            "tokenizer_config.json": b'{"tokenizer_class": "CLIPTokenizer"}\n',
        }  # fmt: skip
        for name, data in files.items():
            atomic_write(out / name, data)
            written.append(out / name)
        return written
    raise ClipforgeError(f"unknown target format {to!r} (known: {', '.join(TARGETS)})")


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    arch: str | ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    drop_heads: bool = False,
) -> tuple[Checkpoint, list[Path]]:
    """Read ``src`` (any of :data:`FORMATS`) and write it to ``dst`` in format ``to``;
    the heads of a clipforge checkpoint come along (see :func:`save_checkpoint`)."""
    # Here, not at the top: clipforge.models.loading reads checkpoints through this module.
    from clipforge.models.loading import attach_heads

    if to not in TARGETS:
        raise ClipforgeError(f"unknown target format {to!r} (known: {', '.join(TARGETS)})")
    ckpt = read_checkpoint(src, arch, overrides)
    model = model_from_state_dict(ckpt.config, ckpt.state_dict)
    model.tokenizer_spec = ckpt.tokenizer
    if not drop_heads:
        attach_heads(model, ckpt.heads, str(ckpt.path))
    return ckpt, save_checkpoint(model, dst, to, drop_heads=drop_heads)


def describe(cfg: ModelConfig) -> str:
    """A one-line summary of an architecture."""
    return _describe(cfg).removeprefix("the architecture (").removesuffix(")") + f", act {cfg.act}"


__all__ = [
    "FORMATS",
    "TARGETS",
    "Checkpoint",
    "check_tokenizer",
    "convert",
    "describe",
    "detect_format",
    "export_tensors",
    "import_tensors",
    "infer_config",
    "model_from_state_dict",
    "read_checkpoint",
    "save_checkpoint",
    "writes_folder",
]
