"""The items of a collection to embed: images (a folder, a manifest) or texts (a file).

Each item has a stable position, a row of metadata (``path``, ``caption`` and any manifest
column) that is known without decoding anything, and, for images, a decoder that raises
:class:`~clipforge.data.sample.SampleError` for an unusable file, which the embedding run
skips and counts by reason, as training does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from PIL import Image

from clipforge.data.readers import (
    FolderDataset,
    ManifestDataset,
    ShardDataset,
    decode_image,
    open_dataset,
)
from clipforge.data.sample import SampleError
from clipforge.errors import ClipforgeError


class Collection:
    """``len(self)`` items with :meth:`row` metadata and, unless ``kind == "text"``, an
    :meth:`image` decoder. ``digest`` names the item list, so a resumed run can tell that
    it continues the same collection."""

    kind = "image"

    def __len__(self) -> int:
        raise NotImplementedError

    def row(self, i: int) -> dict[str, Any]:
        """Item ``i``'s metadata: ``path``, ``caption`` and any further columns."""
        raise NotImplementedError

    def image(self, i: int) -> Image.Image:
        """Item ``i`` decoded to RGB; raises :class:`SampleError`."""
        raise NotImplementedError

    @property
    def digest(self) -> str:
        h = hashlib.sha1(self.kind.encode())
        for i in range(len(self)):
            h.update(str(self.row(i).get("path", "")).encode() + b"\0")
        return h.hexdigest()[:16]


class ImageCollection(Collection):
    """The images of an image folder (recursive; sidecar captions optional) or a manifest."""

    def __init__(self, ds: FolderDataset | ManifestDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def row(self, i: int) -> dict[str, Any]:
        try:
            texts, meta = self.ds.record(i)
        except SampleError:
            # Embedding needs no caption: an image without a sidecar is still searchable.
            texts, meta = [], {}
        return {
            "path": str(self.ds.image_path(i).resolve()),
            "caption": texts[0] if texts else "",
            **meta,
        }

    def image(self, i: int) -> Image.Image:
        path = self.ds.image_path(i)
        return decode_image(path, str(path))


class TextCollection(Collection):
    """One text per non-blank line of a UTF-8 file (``--texts FILE``)."""

    kind = "text"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ClipforgeError(f"--texts: {self.path} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ClipforgeError(f"--texts: cannot read {self.path} as UTF-8 text ({e})") from None
        self.texts = [(n, t.strip()) for n, t in enumerate(lines, 1) if t.strip()]
        if not self.texts:
            raise ClipforgeError(f"--texts: {self.path} holds no text")

    def __len__(self) -> int:
        return len(self.texts)

    def row(self, i: int) -> dict[str, Any]:
        line, text = self.texts[i]
        return {"path": f"{self.path}:{line}", "caption": text}


def open_collection(data: str | os.PathLike[str] | None, texts: str | None = None) -> Collection:
    """The collection ``clipforge embed DATA`` / ``--texts FILE`` reads."""
    if texts is not None:
        if data is not None:
            raise ClipforgeError("give DATA or --texts FILE, not both")
        return TextCollection(texts)
    if data is None:
        raise ClipforgeError("give DATA (an image folder or a CSV/TSV/JSONL manifest) or --texts")
    ds = open_dataset(data)
    if isinstance(ds, ShardDataset):
        raise ClipforgeError(
            f"{data}: webdataset shards cannot be embedded yet; give the image folder or "
            "manifest they were made from"
        )
    return ImageCollection(ds)


__all__ = ["Collection", "ImageCollection", "TextCollection", "open_collection"]
