"""The two encoders run by onnxruntime on the graphs of :mod:`clipforge.models.export`.

:class:`OnnxEncoders` answers ``encode_image`` and ``encode_text`` as :class:`CLIP` does
(normalised float32 features, as torch tensors), so the embedder runs either the same
way. :func:`cached_export` finds or writes the graphs of one model in a cache folder,
keyed by the caller (the embedder keys them by the model's fingerprint), so that a model
is exported once and later runs reuse its graphs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.export import ONNX_FILES, export_onnx

RUNTIMES = ("torch", "onnx")
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

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalised ``[B, D]`` features of preprocessed ``pixels [B, 3, H, W]`` (the
        graph normalises; ``normalize`` is accepted for CLIP's signature)."""
        x = pixels.detach().to(torch.float32).cpu().contiguous().numpy()
        return torch.from_numpy(self._image.run(None, {"pixels": x})[0])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalised ``[B, D]`` features of token ids ``[B, context]``."""
        x = tokens.detach().to(torch.int64).cpu().contiguous().numpy()
        return torch.from_numpy(self._text.run(None, {"tokens": x})[0])


__all__ = ["RUNTIMES", "OnnxEncoders", "cached_export", "check_runtime", "default_cache"]
