"""The items of a collection to embed: images (a folder, a manifest, webdataset shards) or
texts (a file).

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
from clipforge.data.readers.shards import is_remote, read_sample_image
from clipforge.data.sample import Sample, SampleError
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


class ShardCollection(Collection):
    """The samples of webdataset tar shards (``clipforge shard`` writes them), read through
    :class:`~clipforge.data.readers.ShardDataset` as a stream.

    Positions come from the tar headers alone (no member read), a damaged shard's
    ``truncated_shard`` item counting as one, as in training. The embedding run asks for
    items in order, so each is read and decoded once, by one pass over the shards; a
    request elsewhere restarts the stream at that position (the reader skips what comes
    before without reading it). A row's ``path`` is ``SHARD:KEY``, a local ``SHARD`` made
    absolute (as an image folder's paths are), so that the row names its image from any
    working directory (:func:`item_image` reads it back).
    """

    def __init__(self, ds: ShardDataset) -> None:
        self.ds = ds
        self.labels: list[str] = []  # SHARD:KEY of each position (SHARD for an error item)
        for shard in ds.shards:
            name = shard if is_remote(shard) else os.path.abspath(shard)
            for item in ds.read_shard(shard, want=lambda _: False):
                self.labels.append(name if isinstance(item, SampleError) else f"{name}:{item.key}")
        self._stream: Any = None
        self._next = 0  # the position the stream yields next
        self._item: tuple[int, Sample | SampleError] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _get(self, i: int) -> Sample | SampleError:
        if self._item is not None and self._item[0] == i:
            return self._item[1]
        if self._stream is None or i != self._next:
            # Restarted at i: the reader skips what comes before without decoding it
            # (a torchrun rank jumps over the other ranks' shards).
            self._stream, self._next = self.ds.iter_samples(start=i), i
        while self._next <= i:
            item = next(self._stream)
            self._next += 1
        self._item = (i, item)
        return item

    def row(self, i: int) -> dict[str, Any]:
        item = self._get(i)
        if isinstance(item, SampleError):
            return {"path": self.labels[i], "caption": ""}
        return {"path": self.labels[i], "caption": item.texts[0], **item.meta}

    def image(self, i: int) -> Image.Image:
        item = self._get(i)
        if isinstance(item, SampleError):
            raise item
        return item.image

    @property
    def digest(self) -> str:
        # From the headers: hashing row() would decode every image once more.
        h = hashlib.sha1(self.kind.encode())
        for label in self.labels:
            h.update(label.encode() + b"\0")
        return h.hexdigest()[:16]


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


def item_image(path: str) -> Image.Image:
    """The image a collection row's ``path`` names, decoded to RGB: an image file, or
    ``SHARD:KEY``, sample KEY of a local tar shard (:class:`ShardCollection`'s rows).

    Raises :class:`SampleError`: ``missing_image`` when neither is there (a remote shard's
    member is not fetched), else as :func:`~clipforge.data.readers.decode_image` does.
    """
    if not os.path.exists(path):
        # The shard's own name may hold a colon too: the split is where a file is.
        for cut in (i for i, c in enumerate(path) if c == ":"):
            shard, key = path[:cut], path[cut + 1 :]
            if key and os.path.isfile(shard):
                return read_sample_image(shard, key)
    return decode_image(path, path)


def open_collection(data: str | os.PathLike[str] | None, texts: str | None = None) -> Collection:
    """The collection ``clipforge embed DATA`` / ``--texts FILE`` reads."""
    if texts is not None:
        if data is not None:
            raise ClipforgeError("give DATA or --texts FILE, not both")
        return TextCollection(texts)
    if data is None:
        raise ClipforgeError(
            "give DATA (an image folder, a CSV/TSV/JSONL manifest or tar shards) or --texts"
        )
    ds = open_dataset(data)
    if isinstance(ds, ShardDataset):
        return ShardCollection(ds)
    return ImageCollection(ds)


__all__ = [
    "Collection",
    "ImageCollection",
    "ShardCollection",
    "TextCollection",
    "item_image",
    "open_collection",
]
