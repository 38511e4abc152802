"""Embedding images and texts for evaluation, with a cache per (model, data set).

Embedding dominates evaluation time, and several tasks share the same images (zero-shot,
calibration and OOD all use the classification images), so features are computed once
per (model, content) and kept in memory and, with a cache folder, on disk: a second run
with other tasks re-embeds nothing.

Images go through the encoder 128 at a time under ``torch.inference_mode``; on an
accelerator a thread decodes the next batch meanwhile. In bf16 (``precision="bf16"``, or
``"auto"`` where :mod:`clipforge.precision` finds it pays) a bfloat16 copy of the model
encodes, and the first image and text batch are also encoded in float32 to check and
record that the two agree (:attr:`Embedder.precision_record`). On CPU the encoder dominates and
there is little to win in the loop itself (see ``bench/eval_throughput.py``): the cache,
which skips the encoder entirely for images seen before, is what saves time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from clipforge.config import to_dict
from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.datasets import ImageSet
from clipforge.models import CLIP, image_transform
from clipforge.models.compiled import CompiledImageEncoder
from clipforge.models.export import check_onnx
from clipforge.models.onnx_runtime import (
    OnnxEncoders,
    cached_export,
    check_runtime,
    default_cache,
    is_export,
    tokenizer_key,
)
from clipforge.precision import model_width, resolve

# How an embedder runs the encoders: eager PyTorch, onnxruntime on the exported graphs, or
# the image tower compiled by TorchInductor (clipforge.models.compiled).
RUNTIMES = ("torch", "onnx", "compile")

# bf16 keeps 8 significant bits, so each feature is off by ~2^-9 relative and the cosine
# to the float32 feature stays above 0.9999 (measured: ViT-B/32 0.99995, tiny 0.99998).
# Below 0.999 the bf16 path has lost more than rounding: embedding falls back to fp32.
PARITY_MIN_COSINE = 0.999
PARITY_IMAGES = 8  # float32 re-encodes of the first batch: enough to catch a broken kernel
# onnxruntime runs the same float32 function as PyTorch, its sums in other orders: each
# entry of a unit feature moves by the reordering bound of its chain (1e-4 for the test
# model, tests/models/test_wise_export.py; about 1e-3 for ViT-L's ~10^4-term chains), so
# the cosine to PyTorch's feature stays within ~1e-6 of 1. Graphs of another model, or
# a broken export, are far below this.
ONNX_MIN_COSINE = 0.9999


def model_fingerprint(model: CLIP) -> str:
    """A digest of the architecture, every weight and the text tokenizer (when it is not
    CLIP's BPE, which leaves the digest as it was): two models share cached features only
    when they compute the same function of the same images and texts."""
    h = hashlib.sha1(json.dumps(to_dict(model.cfg), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    merge = getattr(model.visual, "merge_tokens", 0)
    if merge:  # token merging computes another function of the same weights
        h.update(f"merge_tokens={merge}".encode())
    spec = getattr(model, "tokenizer_spec", None)
    if spec is not None:  # other ids for the same text: another function of the texts
        h.update(f"tokenizer={spec.digest}".encode())
    return h.hexdigest()[:16]


class Embedder:
    """L2-normalised image and text features of one model, cached by content key."""

    def __init__(
        self,
        model: CLIP,
        tokenizer: Tokenizer,
        cache_dir: str | Path | None = None,
        # On two CPU cores batches of 64-128 ran fastest per image; 256 spills the caches.
        batch_size: int = 128,
        progress: bool = True,
        precision: str = "fp32",
        runtime: str = "torch",
        onnx_dir: str | Path | None = None,
    ) -> None:
        """``runtime="onnx"`` encodes with onnxruntime on the model's ONNX graphs: those of
        the export folder ``onnx_dir`` (``clipforge export``), else exported once into the
        cache (:func:`~clipforge.models.onnx_runtime.default_cache`, under the model's
        fingerprint). Its first image and text batch are checked against PyTorch.
        ``runtime="compile"`` runs the image tower compiled by TorchInductor for batches of
        ``batch_size`` (:mod:`clipforge.models.compiled`): the first batch compiles and is
        checked against eager float32, falling back to it on disagreement."""
        if runtime not in RUNTIMES:
            raise ClipforgeError(
                f"--runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.transform = image_transform(model.cfg)
        self.batch_size = batch_size
        self.progress = progress
        self.fingerprint = model_fingerprint(model)
        device = next(model.parameters()).device
        if runtime == "onnx":
            if precision == "bf16":
                raise ClipforgeError("--precision bf16: the onnx runtime runs the float32 graphs")
            precision = "fp32"
        choice = resolve(precision, model_width(model.cfg), device, use="infer")
        if choice.name == "fp64":
            choice = type(choice)("fp32", "fp64 runs evaluate in float32")
        if runtime == "onnx":
            choice = type(choice)("fp32", "the onnx runtime runs the float32 graphs")
        self.precision = choice.name
        self.precision_record: dict[str, object] = choice.to_dict()
        self._encoder = model
        if choice.bf16:
            self._encoder = copy.deepcopy(model).to(torch.bfloat16).eval()
        self._parity_pending = {"image", "text"} if choice.bf16 else set()
        self.runtime = runtime
        self.onnx_dir: Path | None = None
        if runtime == "onnx":
            self._encoder = self._onnx_encoders(onnx_dir)
            self._parity_pending = {"image", "text"}
            self.precision_record["runtime"] = "onnx"
        elif runtime == "compile":
            self._encoder = CompiledImageEncoder(self._encoder, batch_size)
            self._parity_pending.add("image")  # the compiled graph is checked like bf16
            self.precision_record["runtime"] = "compile"
        # bf16 (onnxruntime's, Inductor's) features differ from PyTorch's fp32 ones in the
        # last bits: they are cached apart.
        key = (
            self.fingerprint
            + ("-bf16" if choice.bf16 else "")
            + ("" if runtime == "torch" else f"-{runtime}")
        )
        self.cache_dir = Path(cache_dir) / key if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}
        self.embedded_images = 0  # images actually run through the encoder (not cached)

    def _onnx_encoders(self, onnx_dir: str | Path | None) -> OnnxEncoders:
        check_runtime()
        if onnx_dir is not None:
            folder = Path(onnx_dir)
            if not is_export(folder):
                raise ClipforgeError(
                    f"--onnx {folder}: not an ONNX export (write one with clipforge export "
                    "MODEL --to onnx --out DIR, or drop --onnx to export into the cache)"
                )
        else:
            check_onnx()  # exporting needs the exporter's packages too
            folder = cached_export(self.model, default_cache(), self.fingerprint)
        self.onnx_dir = folder.resolve()
        encoders = OnnxEncoders(folder)
        # The export carries the tokenizer its text graph was made for: texts tokenized
        # otherwise would be another model's inputs.
        if tokenizer_key(encoders.tokenizer) != tokenizer_key(self.tokenizer):
            raise ClipforgeError(
                f"the ONNX export in {folder} tokenizes otherwise than the model "
                f"({encoders.tokenizer!r} vs {self.tokenizer!r}): it is another model's "
                "export; export this model again or drop --onnx"
            )
        return encoders

    # -- cache -----------------------------------------------------------------------------
    def _cached(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir is not None:
            f = self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
            if f.exists():
                self._memory[key] = torch.load(f, weights_only=True)
                return self._memory[key]
        return None

    def _store(self, key: str, value: torch.Tensor) -> torch.Tensor:
        self._memory[key] = value
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            f = self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
            tmp = f.with_suffix(".tmp")
            torch.save(value, tmp)
            tmp.replace(f)  # a killed run never leaves a half-written cache entry
        return value

    # -- precision -------------------------------------------------------------------------
    def _encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Normalised float32 features of a batch, in the embedder's precision."""
        enc = self._encoder
        fn = enc.encode_image if kind == "image" else enc.encode_text
        feats = fn(x.to(torch.bfloat16) if kind == "image" and self.precision == "bf16" else x,
                   normalize=True).float().cpu()  # fmt: skip
        if kind in self._parity_pending:
            self._parity_pending.discard(kind)
            feats = self._check_parity(kind, x, feats)
        return feats

    def _check_parity(self, kind: str, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Compare the first batch with PyTorch in float32; on a broken bf16 path fall back
        to fp32; ONNX graphs that disagree (another model's) are refused."""
        ref_fn = self.model.encode_image if kind == "image" else self.model.encode_text
        n = min(PARITY_IMAGES, len(x))
        ref = ref_fn(x[:n], normalize=True).float().cpu()
        cos = torch.nn.functional.cosine_similarity(ref, feats[:n], dim=-1)
        self.precision_record[f"{kind}_parity"] = {
            "samples": n,
            "min_cosine": round(float(cos.min()), 6),
            "max_abs_difference": float((ref - feats[:n]).abs().max()),
        }
        if self.runtime == "onnx":
            if float(cos.min()) < ONNX_MIN_COSINE:
                raise ClipforgeError(
                    f"the ONNX {kind} encoder in {self.onnx_dir} disagrees with the model "
                    f"(min cosine {float(cos.min()):.4f} < {ONNX_MIN_COSINE}): it is another "
                    "model's export; export this model again or drop --onnx"
                )
            return feats
        if float(cos.min()) >= PARITY_MIN_COSINE:
            return feats
        what = ("compiled " if self.runtime == "compile" else "") + self.precision
        warnings.warn(
            f"{what} {kind} features disagree with float32 (min cosine {float(cos.min()):.4f} "
            f"< {PARITY_MIN_COSINE}); evaluating in fp32 with eager PyTorch",
            stacklevel=3,
        )
        self.precision, self._encoder, self._parity_pending = "fp32", self.model, set()
        self.precision_record.update(precision="fp32", reason=f"{what} failed the parity check")
        if self.runtime == "compile":
            self.precision_record["runtime"] = "torch"  # the fallback runs eagerly
        self.cache_dir = self.cache_dir.with_name(self.fingerprint) if self.cache_dir else None
        full = ref_fn(x, normalize=True).float().cpu()
        return full

    # -- images ----------------------------------------------------------------------------
    def _batch(self, images: ImageSet, start: int) -> torch.Tensor:
        end = min(start + self.batch_size, len(images))
        return torch.stack([self.transform(images.load(i)) for i in range(start, end)])

    def images(self, images: ImageSet, desc: str = "embed images") -> torch.Tensor:
        """``[N, D]`` features of every image of ``images``."""
        key = f"image:{images.key}"
        hit = self._cached(key)
        if hit is not None:
            return hit
        device = next(self.model.parameters()).device
        starts = list(range(0, len(images), self.batch_size))
        out = []
        bar = tqdm(total=len(images), desc=desc, unit="img", disable=not self.progress, leave=False)
        # On an accelerator the CPU is idle while the encoder runs, so a thread decodes the
        # next batch meanwhile. On CPU that thread would take a core from torch's own
        # threads, whose parallel regions then wait for it: measured 15% slower on 2 cores.
        workers = 1 if device.type != "cpu" else 0
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool, torch.inference_mode():
            pending = pool.submit(self._batch, images, starts[0]) if starts and workers else None
            for n, s in enumerate(starts):
                x = pending.result() if pending is not None else self._batch(images, s)
                if workers and n + 1 < len(starts):
                    pending = pool.submit(self._batch, images, starts[n + 1])
                out.append(self._encode("image", x.to(device)))
                bar.update(len(x))
        bar.close()
        self.embedded_images += len(images)
        feats = torch.cat(out) if out else torch.zeros(0, self.model.cfg.embed_dim)
        return self._store(key, feats)

    # -- streaming -------------------------------------------------------------------------
    def image_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[B, D]`` features of decoded images, uncached: for collections streamed once
        (``clipforge embed``), where a content cache would only hold memory."""
        device = next(self.model.parameters()).device
        if not images:
            return torch.zeros(0, self.model.cfg.embed_dim)
        x = torch.stack([self.transform(im) for im in images])
        with torch.inference_mode():
            feats = self._encode("image", x.to(device))
        self.embedded_images += len(images)
        return feats

    def image_tokens(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[B, n_patches, D]`` normalised per-token image features of decoded images,
        uncached and in float32 (what a caption decoder reads; they are too large to keep)."""
        device = next(self.model.parameters()).device
        x = torch.stack([self.transform(im) for im in images]).to(device)
        with torch.inference_mode():
            _, tokens = self.model.visual(x.to(self.model.logit_scale.dtype), with_tokens=True)
        self.embedded_images += len(images)
        # Normalised as CLIP.forward(with_tokens=True) gives them to the training objectives.
        return torch.nn.functional.normalize(tokens.float(), dim=-1)

    def text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, D]`` features of ``texts``, uncached (see :meth:`image_batch`)."""
        device = next(self.model.parameters()).device
        if not texts:
            return torch.zeros(0, self.model.cfg.embed_dim)
        with torch.inference_mode():
            return self._encode("text", self.tokenizer(list(texts)).to(device))

    # -- texts -----------------------------------------------------------------------------
    def texts(self, texts: Sequence[str], desc: str = "embed texts") -> torch.Tensor:
        """``[T, D]`` features of ``texts``; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        digest = hashlib.sha1("\x00".join(unique).encode()).hexdigest()
        key = f"text:{len(unique)}:{digest}"
        feats = self._cached(key)
        if feats is None:
            device = next(self.model.parameters()).device
            out = []
            starts = range(0, len(unique), self.batch_size)
            with torch.inference_mode():
                for s in tqdm(starts, desc=desc, disable=not self.progress, leave=False):
                    tok = self.tokenizer(unique[s : s + self.batch_size]).to(device)
                    out.append(self._encode("text", tok))
            feats = self._store(
                key, torch.cat(out) if out else torch.zeros(0, self.model.cfg.embed_dim)
            )
        pos = {t: i for i, t in enumerate(unique)}
        return feats[[pos[t] for t in texts]]

    def classifier(self, classnames: Sequence[str], templates: Sequence) -> torch.Tensor:
        """``[C, D]`` zero-shot class embeddings: the normalised mean of the normalised
        template embeddings of each class (template ensembling)."""
        prompts = [t(c) if callable(t) else t.format(c) for c in classnames for t in templates]
        e = self.texts(prompts, desc="embed prompts").view(len(classnames), len(templates), -1)
        return torch.nn.functional.normalize(e.mean(dim=1), dim=-1)
