"""Image folders with sidecar captions (``NAME.txt`` / ``NAME.json`` beside ``NAME.jpg``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clipforge.data.readers.common import (
    CAPTIONS_COLUMN,
    clean_texts,
    decode_image,
    is_weight,
    json_captions,
)
from clipforge.data.sample import Sample, SampleError
from clipforge.errors import ClipforgeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class FolderDataset:
    """Images in a folder tree, each captioned by a sidecar file with the same stem.

    ``cat.jpg`` takes its captions from ``cat.txt`` (one per non-blank line) or, when
    there is none, from ``cat.json`` (a ``captions`` list or a ``caption`` string; its
    other fields, such as ``weight``, become :attr:`Sample.meta`). Images are found
    recursively and sorted by relative path, so indices are stable. An image without a
    sidecar is a ``missing_caption`` sample error, not a data set error.
    """

    streaming = False  # random access by index (see open_source)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClipforgeError(f"image folder not found: {self.root}")
        self._images = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not self._images:
            raise ClipforgeError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, {len(self)} images)"

    def image_path(self, i: int) -> Path:
        return self.root / self._images[i]

    def record(self, i: int) -> tuple[list[str], dict[str, Any]]:
        """Image ``i``'s captions and meta from its sidecar; raises :class:`SampleError`."""
        path = self.image_path(i)
        txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
        meta: dict[str, Any] = {}
        try:
            if js.is_file():
                meta = json.loads(js.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise SampleError("unreadable_meta", f"{js} (not a JSON object)")
            if txt.is_file():
                texts = txt.read_text(encoding="utf-8").splitlines()
            else:
                texts = json_captions(meta) or []
                if not js.is_file():
                    raise SampleError("missing_caption", f"{path} (no {txt.name} or {js.name})")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SampleError("unreadable_caption", f"{path} sidecar ({exc})") from None
        meta.pop(CAPTIONS_COLUMN, None)
        meta.pop("caption", None)
        if "weight" in meta and not is_weight(meta["weight"]):
            raise SampleError("bad_weight", f"{path} (weight {meta['weight']!r})")
        return clean_texts(texts), meta

    def load(self, i: int) -> Sample:
        """Decode image ``i`` and read its sidecar captions."""
        texts, meta = self.record(i)
        if not texts:
            raise SampleError("empty_caption", str(self.image_path(i)))
        image = decode_image(self.image_path(i), str(self.image_path(i)))
        return Sample(image=image, texts=texts, meta=meta, key=self._images[i])
