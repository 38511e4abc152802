"""The one way to get a model from disk: :func:`load`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoint import resolve
from clipforge.data.hf_tokenizers import TokenizerSpec
from clipforge.data.tokenizer import Tokenizer, get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.config import ModelConfig
from clipforge.models.convert import (
    check_tokenizer,
    detect_format,
    model_from_state_dict,
    read_checkpoint,
)
from clipforge.models.convert.files import read_raw
from clipforge.models.decoder import decoder_from_payload

# How each kind of head a checkpoint may carry is rebuilt (see ``Objective.heads``).
_HEADS = {"decoder": decoder_from_payload}


def load(
    path_or_run: str | Path,
    arch: str | ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    what: str = "model",
) -> CLIP:
    """A :class:`CLIP` (fp32, eval mode) from a run folder or any checkpoint clipforge reads.

    A run folder gives its ``checkpoints/final.pt`` (else ``last.pt``); a file or folder
    of weights may be clipforge's, OpenAI's, OpenCLIP's or Hugging Face's (CLIP or SigLIP).
    ``arch`` (a preset name or a :class:`ModelConfig`) replaces the architecture the file
    states or implies; ``overrides`` (dotted keys, e.g. ``{"act": "gelu"}``) adjust it.
    LoRA adapters in the checkpoint are merged into the weights they adapt. Heads an
    objective trained beside the towers (``--loss clip+coca``'s caption decoder) come
    back in ``model.heads`` (``model.heads["decoder"]``), in eval mode.
    Errors name ``what`` the path was given as (``--init``, ``distillation teacher``, ...).
    """
    path = resolve(path_or_run, what)
    ckpt = read_checkpoint(path, arch, overrides)
    model = model_from_state_dict(ckpt.config, ckpt.state_dict)
    model.tokenizer_spec = ckpt.tokenizer
    return attach_heads(model, ckpt.heads, f"{what} {path}")


def tokenizer_for(model: CLIP, context_length: int | None = None) -> Tokenizer | Any:
    """The text tokenizer of ``model``: the one its checkpoint shipped (a SigLIP folder's
    SentencePiece model, see :mod:`clipforge.data.hf_tokenizers`), else CLIP's BPE.

    The one way callers get a tokenizer for a model, so a loaded checkpoint decides how
    its texts become ids. Rows have the model's context length unless ``context_length``.
    """
    length = context_length if context_length is not None else model.cfg.text.context_length
    spec = getattr(model, "tokenizer_spec", None)
    return get_tokenizer(length) if spec is None else spec.build(length)


def tokenizer_spec_of(path_or_run: str | Path, what: str = "model") -> TokenizerSpec | None:
    """The tokenizer the checkpoint at ``path_or_run`` ships (``None``: CLIP's BPE), read
    without building the model, and refused as :func:`load` refuses it (a SigLIP folder
    without its tokenizer files)."""
    path = resolve(path_or_run, what)
    raw = read_raw(path)
    check_tokenizer(raw, detect_format(raw))
    return raw.tokenizer


def attach_heads(model: CLIP, heads: Mapping[str, Any] | None, where: str) -> CLIP:
    """Rebuild the heads a checkpoint stores (``heads``: its ``heads`` entry, see
    :func:`clipforge.checkpoint.heads_payload`) into ``model.heads``, in eval mode;
    returns ``model``. Errors start with ``where`` (the file, and what it was given as)."""
    for name, payload in (heads or {}).items():
        if name not in _HEADS:
            raise ClipforgeError(f"{where}: unknown head {name!r} in the checkpoint")
        try:
            model.heads[name] = _HEADS[name](payload)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise ClipforgeError(f"{where}: cannot read its {name}: {e}") from None
    return model


def differing_tensors(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    *,
    extra_ok: bool = False,
) -> list[str]:
    """The tensors of a model (``expected``) that a state dict read from a file
    (``found``) lacks or holds in another shape, and unless ``extra_ok`` the ones it
    holds beyond them; sorted, empty when the architectures match.

    ``extra_ok`` is for copying weights into another run's model (``--init``), where a
    tensor the model does not use, such as a SigLIP bias under a CLIP loss, is left out.
    """
    names = set(expected) if extra_ok else set(expected) | set(found)
    return sorted(
        k
        for k in names
        if k not in expected or k not in found or expected[k].shape != found[k].shape
    )


def same_head(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two heads (caption decoders) have one architecture: equal ``cfg``, tensors
    of equal names and shapes, and equal integer buffers (a decoder's vocabulary ids,
    which say what its outputs mean), so that ``b``'s weights can take ``a``'s place or be
    averaged with them."""
    sa, sb = a.state_dict(), b.state_dict()
    if getattr(a, "cfg", None) != getattr(b, "cfg", None) or differing_tensors(sa, sb):
        return False
    return all(torch.equal(sa[k], v) for k, v in sb.items() if not v.is_floating_point())
