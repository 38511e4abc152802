"""Readers for image-caption data on disk, one module per format, behind :func:`open_dataset`.

Formats: manifests (:mod:`.manifest`), webdataset tar shards (:mod:`.shards`) and image
folders with sidecar captions (:mod:`.folder`); :mod:`.common` holds what they share.

Two kinds of failure are kept apart on purpose:

* a problem with the dataset as a whole (a missing manifest, a malformed row, a missing
  column, a shard that does not exist) raises :class:`~clipforge.errors.ClipforgeError`
  with a one-line message naming the file and line, at construction time, so a run fails
  before it starts;
* a problem with one sample (a missing or corrupt image, an empty caption, a damaged shard
  tail) surfaces as :class:`~clipforge.data.sample.SampleError`, which the trainer skips and
  counts, because a web-scale dataset always has some of those.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipforge.data.readers.common import (
    ACCEPTED_FORMS,
    MANIFEST_SUFFIXES,
    SHARD_SUFFIXES,
    decode_image,
    to_rgb,
)
from clipforge.data.readers.folder import IMAGE_SUFFIXES, FolderDataset
from clipforge.data.readers.manifest import ManifestDataset
from clipforge.data.readers.shards import RawSample, ShardDataset, expand_pattern
from clipforge.errors import ClipforgeError


def _is_brace_pattern(path: str) -> bool:
    return "{" in path and expand_pattern(path) != [path]


def _has_suffix(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)


def open_dataset(
    path: str | os.PathLike[str], image_key: str = "image", caption_key: str = "caption"
) -> ManifestDataset | ShardDataset | FolderDataset:
    """Open ``path`` with the reader its form calls for.

    * ``*.tar`` (also ``.tar.gz``/``.tgz``) or a brace pattern -> :class:`ShardDataset`;
    * ``*.csv``, ``*.tsv``, ``*.jsonl`` (or ``*.json`` lines) -> :class:`ManifestDataset`;
    * a directory with ``*.tar`` files -> :class:`ShardDataset` over them in sorted order;
    * a directory with exactly one manifest -> that manifest;
    * any other directory with images -> :class:`FolderDataset` (sidecar captions).

    ``image_key`` and ``caption_key`` name manifest columns; shards use webdataset's
    member extensions instead. Anything else raises :class:`ClipforgeError`.
    """
    text = os.fspath(path)
    if _is_brace_pattern(text) or _has_suffix(text, SHARD_SUFFIXES):
        return ShardDataset(text)
    if _has_suffix(text, MANIFEST_SUFFIXES):
        return ManifestDataset(text, image_key=image_key, caption_key=caption_key)
    folder = Path(text)
    if folder.is_dir():
        shards = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".tar"))
        if shards:
            return ShardDataset([str(p) for p in shards])
        # A .json next to an image of the same name is that image's sidecar, not a manifest.
        image_stems = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        manifests = sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and _has_suffix(p.name, MANIFEST_SUFFIXES)
            and not (p.suffix.lower() == ".json" and p.stem in image_stems)
        )
        if len(manifests) == 1:
            return ManifestDataset(manifests[0], image_key=image_key, caption_key=caption_key)
        if len(manifests) > 1:
            names = ", ".join(p.name for p in manifests)
            raise ClipforgeError(f"{text}: several manifests ({names}); name the one to use")
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            return FolderDataset(folder)
        raise ClipforgeError(f"{text}: directory holds no *.tar shards, manifest or images")
    if not folder.exists():
        raise ClipforgeError(f"dataset not found: {text} (expected {ACCEPTED_FORMS})")
    raise ClipforgeError(f"cannot read {text} as a dataset; expected {ACCEPTED_FORMS}")


__all__ = [
    "MANIFEST_SUFFIXES",
    "FolderDataset",
    "ManifestDataset",
    "RawSample",
    "ShardDataset",
    "decode_image",
    "open_dataset",
    "to_rgb",
]
