"""Embedding images and texts for evaluation, with a cache per (model, data set).

Embedding dominates evaluation time, and several tasks share the same images (zero-shot,
calibration and OOD all use the classification images), so features are computed once
per (model, content) and kept in memory and, with a cache folder, on disk: a second run
with other tasks re-embeds nothing.

Images go through the encoder 128 at a time under ``torch.inference_mode``; on an
accelerator a thread decodes the next batch meanwhile. On CPU the encoder dominates and
there is little to win in the loop itself (see ``bench/eval_throughput.py``): the cache,
which skips the encoder entirely for images seen before, is what saves time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from clipforge.config import to_dict
from clipforge.data.tokenizer import Tokenizer
from clipforge.eval.datasets import ImageSet
from clipforge.models import CLIP, image_transform


def model_fingerprint(model: CLIP) -> str:
    """A digest of the architecture and every weight: two models share cached features
    only when they compute the same function."""
    h = hashlib.sha1(json.dumps(to_dict(model.cfg), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
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
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.transform = image_transform(model.cfg)
        self.batch_size = batch_size
        self.progress = progress
        self.fingerprint = model_fingerprint(model)
        self.cache_dir = Path(cache_dir) / self.fingerprint if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}
        self.embedded_images = 0  # images actually run through the encoder (not cached)

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
                out.append(self.model.encode_image(x.to(device), normalize=True).float().cpu())
                bar.update(len(x))
        bar.close()
        self.embedded_images += len(images)
        feats = torch.cat(out) if out else torch.zeros(0, self.model.cfg.embed_dim)
        return self._store(key, feats)

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
                    out.append(self.model.encode_text(tok, normalize=True).float().cpu())
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
