"""Writers that turn a stream of :class:`Sample` into files the readers in :mod:`clipforge.data.readers` load.

Both writers store every caption and the ``meta`` dict, so reading their output back gives
the same samples (pixel-identical for PNG, close for JPEG).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from clipforge.data.readers import FolderDataset, ManifestDataset, decode_image, to_rgb
from clipforge.data.readers.common import CAPTIONS_COLUMN, META_COLUMN
from clipforge.data.sample import Sample, SampleError, SkipCounter
from clipforge.errors import ClipforgeError

__all__ = [
    "EncodedSample",
    "shard_dataset",
    "write_encoded_shards",
    "write_member_shards",
    "write_manifest",
    "write_shards",
]

# Pillow format name, file extension and the modes that format stores without loss.
_IMAGE_FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "png": ("PNG", "png", ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")),
    "jpg": ("JPEG", "jpg", ("L", "RGB")),
    "jpeg": ("JPEG", "jpg", ("L", "RGB")),
    "webp": ("WEBP", "webp", ("RGB", "RGBA")),
}

S = TypeVar("S")

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def _image_format(image_format: str) -> tuple[str, str, tuple[str, ...]]:
    try:
        return _IMAGE_FORMATS[image_format.lower().lstrip(".")]
    except KeyError:
        raise ClipforgeError(
            f"unknown image format {image_format!r}; expected one of {', '.join(_IMAGE_FORMATS)}"
        ) from None


def _encode_image(image: Image.Image, image_format: str, quality: int = 95) -> bytes:
    pil_format, _, modes = _image_format(image_format)
    if image.mode not in modes:
        image = to_rgb(image)
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        # Full-resolution chroma at high quality, as ImageMagick does (quality >= 90):
        # 4:2:0 subsampling smears colour edges over 2x2 blocks, which matters on small
        # images; below 90 the caller asked for size over fidelity.
        image.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif pil_format == "WEBP":
        image.save(buffer, format="WEBP", quality=quality)
    else:
        image.save(buffer, format=pil_format)
    return buffer.getvalue()


class _KeyMaker:
    """Turns sample keys into unique names safe for file systems and webdataset.

    webdataset splits a member name at its first dot to find the key, and a key with a
    slash would create folders, so everything outside ``[A-Za-z0-9_-]`` becomes ``_``.
    Sanitising can map two keys onto one name (``a.b`` and ``a_b``); the later one then
    gets its index appended, because two samples with one key would be merged on reading.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, key: str, index: int) -> str:
        name = _UNSAFE_KEY_CHARS.sub("_", key).strip("_") if key else ""
        if not name:
            name = f"{index:08d}"
        if name in self._used:
            name = f"{name}_{index:08d}"
        while name in self._used:  # only if a key happened to end in that very suffix
            name += "_"
        self._used.add(name)
        return name


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (boxes, scores) are common in meta; store them as numbers.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dump_json(value: Any, key: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"sample {key!r}: meta cannot be stored as JSON: {exc}") from None


def _iterate(
    samples: Iterable[S], progress: bool, desc: str, total: int | None = None
) -> Iterator[S]:
    if not progress:
        return iter(samples)
    from tqdm import tqdm

    return iter(tqdm(samples, desc=desc, unit="sample", total=total))


def write_manifest(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike[str],
    fmt: str = "csv",
    name: str = "train",
    image_format: str = "png",
    progress: bool = False,
) -> Path:
    """Write samples as image files plus a CSV or JSON Lines manifest; return its path.

    Images go to ``out_dir/images/{key}.{ext}`` (the key made file-name safe, or the
    sample's index as ``%08d`` when it has none). The manifest ``out_dir/{name}.csv``
    has the columns ``image`` (relative to ``out_dir``), ``caption`` (the first text),
    ``captions`` (every text, as a JSON list) and ``meta`` (a JSON object);
    ``out_dir/{name}.jsonl`` holds one object per line with the same four fields, where
    ``captions`` is a list and ``meta`` an object. :class:`ManifestDataset` reads both
    back into the same texts and meta.

    The manifest is written under a temporary name and renamed when complete, so a
    crashed run never leaves a manifest that looks whole.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise ClipforgeError(f"unknown manifest format {fmt!r}; expected 'csv' or 'jsonl'")
    _, ext, _ = _image_format(image_format)
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    manifest = out / f"{name}.{fmt}"
    tmp = out / f".{name}.{fmt}.tmp"
    make_key = _KeyMaker()
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f) if fmt == "csv" else None
            if writer is not None:
                writer.writerow(["image", "caption", CAPTIONS_COLUMN, META_COLUMN])
            for index, sample in enumerate(_iterate(samples, progress, f"writing {manifest}")):
                key = make_key(sample.key, index)
                relative = f"images/{key}.{ext}"
                (out / relative).write_bytes(_encode_image(sample.image, image_format))
                caption = sample.texts[0] if sample.texts else ""
                if writer is not None:
                    writer.writerow(
                        [
                            relative,
                            caption,
                            _dump_json(list(sample.texts), key),
                            _dump_json(sample.meta, key),
                        ]
                    )
                else:
                    row = {
                        "image": relative,
                        "caption": caption,
                        CAPTIONS_COLUMN: list(sample.texts),
                        META_COLUMN: sample.meta,
                    }
                    f.write(_dump_json(row, key) + "\n")
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


class _ShardWriter:
    """One tar shard written under a temporary name and renamed into place on close."""

    def __init__(self, path: Path, mtime: int) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")  # not *.tar: readers must not see it
        self.mtime = mtime
        self.count = 0
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self) -> Path:
        self._tar.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class EncodedSample:
    """A sample as it goes into a shard: image bytes already encoded as ``ext``."""

    key: str
    image: bytes
    ext: str
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def write_member_shards(
    samples: Iterable[tuple[str, dict[str, bytes]]],
    out_dir: str | os.PathLike[str],
    name: str = "train",
    shard_size: int = 1000,
    progress: bool = False,
    desc: str | None = None,
    total: int | None = None,
) -> list[Path]:
    """Write ``(key, {extension: bytes})`` samples as tar shards ``{name}-{i:06d}.tar``.

    The lowest layer of the shard writers: members are stored as given, under the key
    made safe and unique. Each shard is written under a temporary name and renamed when
    complete, so a shard that exists is whole. Returns the shards written.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_key = _KeyMaker()
    # Whole seconds: a fractional mtime makes PAX add an extended header to every member,
    # which doubles the headers a reader parses.
    mtime = int(time.time())
    written: list[Path] = []
    shard: _ShardWriter | None = None
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    items = _iterate(samples, progress, desc or f"writing {name} shards", total)
    try:
        for index, (raw_key, members) in enumerate(items):
            if shard is None:
                shard = _ShardWriter(out / f"{name}-{len(written):06d}.tar", mtime)
            key = make_key(raw_key, index)
            for ext, data in members.items():
                shard.add(f"{key}.{ext}", data)
            shard.count += 1
            if shard.count == shard_size:
                written.append(shard.commit())
                shard = None
        if shard is not None:
            written.append(shard.commit())
            shard = None
    finally:
        if shard is not None:
            shard.abort()
    return written


def write_encoded_shards(
    samples: Iterable[EncodedSample],
    out_dir: str | os.PathLike[str],
    name: str = "train",
    shard_size: int = 1000,
    progress: bool = False,
    desc: str | None = None,
    total: int | None = None,
) -> list[Path]:
    """Write encoded samples as webdataset shards (the layout :func:`write_shards` documents).

    The image bytes are stored as given, so a JPEG from a manifest is not re-encoded.
    """
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]

    def members() -> Iterator[tuple[str, dict[str, bytes]]]:
        for index, sample in enumerate(samples):
            if CAPTIONS_COLUMN in sample.meta:
                raise ClipforgeError(
                    f"sample {sample.key or index!r}: meta has a {CAPTIONS_COLUMN!r} entry, "
                    "which write_shards reserves for the captions"
                )
            texts = [" ".join(t.splitlines()) for t in sample.texts]
            record = {**sample.meta, CAPTIONS_COLUMN: list(sample.texts)}
            yield (
                sample.key,
                {
                    sample.ext: sample.image,
                    "txt": "\n".join(texts).encode("utf-8"),
                    "json": _dump_json(record, sample.key or str(index)).encode("utf-8"),
                },
            )

    return write_member_shards(members(), out_dir, name, shard_size, progress, desc, total)


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike[str],
    name: str = "train",
    shard_size: int = 1000,
    image_format: str = "jpg",
    quality: int = 95,
    progress: bool = False,
) -> list[Path]:
    """Write samples as webdataset tar shards ``out_dir/{name}-{i:06d}.tar``; return them.

    Each sample becomes three members: ``{key}.{ext}`` (the encoded image),
    ``{key}.txt`` (one caption per line) and ``{key}.json`` (``meta`` plus a
    ``captions`` list). Keys are made safe (no dots or slashes) and unique; a sample
    without a key is named by its index. Line breaks inside a caption become spaces in
    the ``.txt`` member, since a line break there separates captions; the tokenizer folds
    whitespace anyway. ``captions`` is reserved in ``meta``: a sample that already has it
    raises :class:`ClipforgeError`.

    JPEG at ``quality >= 90`` keeps full-resolution chroma (4:4:4); below that it uses
    4:2:0, which is smaller but blurs colour edges.

    Each shard holds ``shard_size`` samples (the last one fewer) and is written under a
    temporary name, then renamed, so a shard that exists is complete. No samples, no shards.
    """
    _, ext, _ = _image_format(image_format)
    encoded = (
        EncodedSample(s.key, _encode_image(s.image, image_format, quality), ext, s.texts, s.meta)
        for s in samples
    )
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    return write_encoded_shards(
        encoded, out_dir, name, shard_size, progress, f"writing {name} shards", total
    )


# Image files a shard stores as they are; anything else is re-encoded as PNG.
_SHARD_IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


def shard_dataset(
    dataset: ManifestDataset | FolderDataset,
    out_dir: str | os.PathLike[str],
    name: str = "train",
    shard_size: int = 1000,
    verify: bool = False,
    progress: bool = False,
) -> tuple[list[Path], SkipCounter]:
    """Pack a manifest or an image folder into webdataset shards; return them and the skips.

    Every caption and the meta (weights included) travel along. JPEG, PNG and WebP files
    are copied byte for byte; other formats are decoded and stored as PNG. Rows whose
    image file is missing, or whose captions are empty, are left out and counted; with
    ``verify`` every image is also decoded first and unreadable ones are left out too
    (otherwise they are copied and the training reader skips them).
    """
    skipped = SkipCounter()

    def encoded() -> Iterator[EncodedSample]:
        for i in range(len(dataset)):
            path = dataset.image_path(i)
            try:
                texts, meta = dataset.record(i)
                if not texts:
                    raise SampleError("empty_caption", str(path))
                ext = _SHARD_IMAGE_EXTS.get(path.suffix.lower().lstrip("."))
                if verify or ext is None:
                    image = decode_image(path, str(path))
                if ext is None:
                    data, ext = _encode_image(image, "png"), "png"
                else:
                    data = path.read_bytes()
            except FileNotFoundError:
                skipped.add("missing_image")
                continue
            except SampleError as exc:
                skipped.add(exc.reason)
                continue
            meta = {k: v for k, v in meta.items() if k != CAPTIONS_COLUMN}
            yield EncodedSample(path.stem, data, ext, texts, meta)

    shards = write_encoded_shards(
        encoded(), out_dir, name, shard_size, progress, total=len(dataset)
    )
    return shards, skipped
