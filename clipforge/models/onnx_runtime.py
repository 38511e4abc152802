"""The two encoders run by onnxruntime on the graphs of :mod:`clipforge.models.export`.

:class:`OnnxEncoders` answers ``encode_image`` and ``encode_text`` as :class:`CLIP` does
(normalised float32 features, as torch tensors), so the embedder runs either the same
way. :func:`cached_export` finds or writes the graphs of one model in a cache folder,
keyed by the caller (the embedder keys them by the model's fingerprint), so that a model
is exported once and later runs reuse its graphs. :func:`export_tokenizer` gives the
tokenizer an export carries (``tokenizer_info.json``), so texts become the ids the model
was trained on without the checkpoint: ``OnnxEncoders(folder).encode_texts(["a cat"])``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipforge.data.hf_tokenizers import TokenizerSpec
from clipforge.data.tokenizer import get_tokenizer, is_clip_bpe
from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.export import CLIP_BPE, ONNX_FILES, TOKENIZER_INFO, export_onnx

EXTRA_HINT = "pip install 'clipforge[onnx]'"


def check_runtime() -> None:
    """Refuse in one line when onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ClipforgeError(f"--runtime onnx needs the onnx extra: {EXTRA_HINT}") from None


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/clipforge/onnx`` (``~/.cache/clipforge/onnx`` without it)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "clipforge" / "onnx"


def is_export(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ONNX_FILES)


def cached_export(model: CLIP, root: str | Path, key: str) -> Path:
    """``root/key``, holding the graphs of ``model``; exported there on first use.

    The export goes to a temporary folder beside it and is renamed into place, so a
    killed export leaves no half-written graph that a later run would take as complete.
    """
    folder = Path(root) / key
    if is_export(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        export_onnx(model, tmp)
        if folder.exists():  # an incomplete folder (not ours to keep: the cache's own)
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipforgeError(f"cannot read {path}: {e}") from None


def export_tokenizer(folder: str | Path) -> Any:
    """The tokenizer of the export in ``folder``, as its ``tokenizer_info.json`` describes
    it: CLIP's BPE (its ``vocab.json`` + ``merges.txt`` checked to be that BPE), or the
    SentencePiece / ``tokenizer.json`` tokenizer rebuilt from its file and options (checked
    against the recorded digest); rows of the recorded context length, as ``text.onnx``
    takes them. Anything missing or altered is refused in one line."""
    folder = Path(folder)
    path = folder / TOKENIZER_INFO
    if not path.is_file():
        raise ClipforgeError(
            f"{folder}: no {TOKENIZER_INFO} (an export written before clipforge exported "
            "tokenizers); export the model again with clipforge export MODEL --to onnx"
        )
    info = _read_json(path)
    try:
        kind, length = info["kind"], info["context_length"]
        files = [folder / name for name in info["files"]]
    except (KeyError, TypeError) as e:
        raise ClipforgeError(f"{path}: malformed, no {e}") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ClipforgeError(f"{folder}: its tokenizer files are missing: {', '.join(missing)}")
    if kind == CLIP_BPE:
        vocab = _read_json(folder / "vocab.json")
        merges = (folder / "merges.txt").read_text(encoding="utf-8")
        if not isinstance(vocab, dict) or not is_clip_bpe(vocab, merges):
            raise ClipforgeError(f"{folder}: vocab.json and merges.txt are not CLIP's BPE")
        return get_tokenizer(length)
    name = "spiece.model" if kind == "sentencepiece" else "tokenizer.json"
    options = info.get("options") or {}
    if not isinstance(options, dict) or kind not in ("sentencepiece", "json"):
        raise ClipforgeError(f"{path}: unknown tokenizer kind {kind!r} or malformed options")
    data = (folder / name).read_bytes()
    spec = TokenizerSpec(kind, data, tuple(sorted(options.items())), str(folder / name))
    if spec.digest != info.get("digest"):
        raise ClipforgeError(
            f"{folder / name} is not the tokenizer the export was written with (digest "
            f"{spec.digest}, {TOKENIZER_INFO} says {info.get('digest')})"
        )
    return spec.build(length)


def tokenizer_key(tokenizer: Any) -> tuple[str, int]:
    """What decides a tokenizer's rows: its kind (a spec's digest, or CLIP's BPE) and its
    context length; two tokenizers with one key give the same ids."""
    spec = getattr(tokenizer, "spec", None)
    return (spec.digest if spec is not None else CLIP_BPE, int(tokenizer.context_length))


class OnnxEncoders:
    """onnxruntime sessions of ``image.onnx`` and ``text.onnx`` in ``folder``."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        check_runtime()
        import onnxruntime as ort

        self.folder = Path(folder)
        if not is_export(self.folder):
            missing = [f for f in ONNX_FILES if not (self.folder / f).is_file()]
            raise ClipforgeError(
                f"{self.folder} is not an ONNX export (missing {', '.join(missing)}; "
                "write one with clipforge export MODEL --to onnx)"
            )
        opts = ort.SessionOptions()
        # The same thread count as torch's (the command's --threads), so that neither
        # runtime is timed or run with more cores than the other.
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        try:
            self._image = ort.InferenceSession(
                str(self.folder / "image.onnx"), opts, providers=providers
            )
            self._text = ort.InferenceSession(
                str(self.folder / "text.onnx"), opts, providers=providers
            )
        except Exception as e:  # onnxruntime raises its own classes for unreadable graphs
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ClipforgeError(f"{self.folder}: onnxruntime cannot load it ({msg})") from None
        # The export's own tokenizer: the ids text.onnx was exported for.
        self.tokenizer = export_tokenizer(self.folder)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalised ``[B, D]`` features of preprocessed ``pixels [B, 3, H, W]`` (the
        graph normalises; ``normalize`` is accepted for CLIP's signature)."""
        x = pixels.detach().to(torch.float32).cpu().contiguous().numpy()
        return torch.from_numpy(self._image.run(None, {"pixels": x})[0])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalised ``[B, D]`` features of token ids ``[B, context]``."""
        x = tokens.detach().to(torch.int64).cpu().contiguous().numpy()
        return torch.from_numpy(self._text.run(None, {"tokens": x})[0])

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised ``[B, D]`` features of texts, tokenized by the export's tokenizer."""
        return self.encode_text(self.tokenizer(list(texts)))


__all__ = [
    "OnnxEncoders",
    "cached_export",
    "check_runtime",
    "default_cache",
    "export_tokenizer",
    "tokenizer_key",
]
