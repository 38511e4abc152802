"""Readers for image-caption data on disk: manifests (CSV/TSV/JSONL) and webdataset tar shards.

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

import csv
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from clipforge.data.sample import Sample, SampleError
from clipforge.errors import ClipforgeError

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

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# Column (or JSON field) names that write_manifest uses to carry every caption and the
# structured annotations of a sample; the reader understands them so a written manifest
# reads back to the same Sample.
CAPTIONS_COLUMN = "captions"
META_COLUMN = "meta"

_ACCEPTED_FORMS = (
    "a manifest (.csv, .tsv, .jsonl), a tar shard (.tar), a brace pattern such as "
    "'shards/train-{0000..0099}.tar', or a directory holding *.tar shards or one manifest"
)


# --------------------------------------------------------------------------------------------
# Image decoding
# --------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB copy of ``image`` whatever its mode.

    Transparent images are composited on white rather than converted directly, because a
    plain ``convert("RGB")`` keeps whatever colour sits under the alpha channel (often black
    or noise). 16- and 32-bit grayscale are rescaled to 8 bits, because Pillow's own
    conversion clips every value above 255 to white.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    # convert() always returns a copy, so the result outlives the file it came from.
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map a high-bit-depth grayscale array onto 0..255.

    ``I;16`` data has a known range, so a dark 16-bit image stays dark. Modes ``I`` and
    ``F`` carry no range, so it is guessed from the values: 8-bit, 16-bit, [0, 1] floats,
    or else the array's own min..max.
    """
    values = array.astype(np.float64)
    if sixteen_bit:
        scaled = values / 257.0  # 65535 -> 255 exactly
    elif values.size == 0:
        scaled = values
    else:
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0 and array.dtype.kind == "f":
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_image(source: str | os.PathLike[str] | bytes, label: str) -> Image.Image:
    """Open and fully decode an image (a path or encoded bytes) into RGB.

    Raises ``SampleError("missing_image", label)`` when the file does not exist and
    ``SampleError("unreadable_image", label)`` for anything Pillow cannot decode. The
    ``.load()`` call is what makes a truncated file fail here rather than later inside a
    DataLoader worker; it relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` staying False,
    which clipforge never changes.
    """
    fp: str | os.PathLike[str] | IO[bytes]
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise SampleError("missing_image", label) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's decoders raise a zoo of types for damaged data (OSError, SyntaxError,
        # ValueError, struct.error, zlib.error, EOFError, DecompressionBombError, ...);
        # every one of them means this single image is unusable.
        raise SampleError("unreadable_image", f"{label} ({type(exc).__name__}: {exc})") from None


def _json_captions(meta: dict[str, Any]) -> list[str] | None:
    """The captions a JSON record carries (``captions`` list or ``caption`` string), if any."""
    captions = meta.get(CAPTIONS_COLUMN)
    if isinstance(captions, list) and all(isinstance(t, str) for t in captions):
        return list(captions)
    caption = meta.get("caption")
    if isinstance(caption, str):
        return [caption]
    return None


def _is_weight(value: Any) -> bool:
    """A per-sample loss weight must be a finite number >= 0."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        return False
    return w >= 0.0 and np.isfinite(w)


def _check_weight(meta: dict[str, Any], where: str) -> None:
    """Parse a manifest's ``weight`` field in place (CSV cells are text) or fail on its row."""
    if "weight" not in meta:
        return
    value = meta["weight"]
    if isinstance(value, str) and not value.strip():
        del meta["weight"]  # an empty cell means the default weight
        return
    if not _is_weight(value):
        raise ClipforgeError(f"{where}: weight must be a number >= 0, found {value!r}")
    meta["weight"] = float(value)


def _clean_texts(texts: list[str]) -> list[str]:
    """Drop blank captions; a sample whose captions are all blank has none."""
    return [t for t in texts if t.strip()]


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)  # one per manifest row: millions of them for web-scale data
class _Row:
    image: str
    texts: list[str]
    meta: dict[str, Any]
    line: int


class ManifestDataset:
    """Image-caption pairs listed in a CSV, TSV or JSON Lines manifest.

    Each row names an image (relative to the manifest's folder unless absolute) and its
    caption. In JSON Lines the caption may also be a list of strings; ``caption_key`` may
    name several columns separated by commas (``"caption,caption_2"``), each giving one
    caption (empty cells are dropped). Two optional
    columns written by :func:`clipforge.data.writers.write_manifest` are understood:
    ``captions`` (a JSON list of every caption; it takes precedence over the caption
    column) and ``meta`` (a JSON object, merged into :attr:`Sample.meta`). Every other
    column ends up in ``meta`` as is.

    All rows are read and validated at construction (the text only, not the images), so
    a malformed manifest fails at once with ``PATH:LINE: ...``; per-image problems show up
    later as :class:`SampleError` from :meth:`load`.
    """

    def __init__(
        self, path: str | os.PathLike[str], image_key: str = "image", caption_key: str = "caption"
    ) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.image_key = image_key
        self.caption_key = caption_key
        # Several caption columns ("caption,caption_2,caption_3") give several captions.
        self.caption_keys = tuple(k.strip() for k in caption_key.split(",") if k.strip())
        if not self.caption_keys:
            raise ClipforgeError(f"{self.path}: empty caption column name")
        if not self.path.is_file():
            raise ClipforgeError(f"manifest not found: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix not in MANIFEST_SUFFIXES:
            raise ClipforgeError(
                f"{self.path}: unknown manifest format {suffix or '(no suffix)'!r}; "
                f"expected one of {', '.join(MANIFEST_SUFFIXES)}"
            )
        try:
            if suffix in (".csv", ".tsv"):
                self._rows = self._read_delimited(delimiter="\t" if suffix == ".tsv" else ",")
            else:
                self._rows = self._read_jsonl()
        except UnicodeDecodeError as exc:
            raise ClipforgeError(f"{self.path}: not valid UTF-8 text ({exc.reason})") from None

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"ManifestDataset({str(self.path)!r}, {len(self)} rows)"

    def image_path(self, i: int) -> Path:
        """The resolved path of row ``i``'s image."""
        return self.root / self._rows[i].image

    def record(self, i: int) -> tuple[list[str], dict[str, Any]]:
        """Row ``i``'s non-blank captions and meta, without touching the image."""
        row = self._rows[i]
        return _clean_texts(row.texts), dict(row.meta)

    def load(self, i: int) -> Sample:
        """Load row ``i``: decode its image to RGB and return the :class:`Sample`.

        Raises :class:`SampleError` with reason ``empty_caption``, ``missing_image`` or
        ``unreadable_image`` for a row that cannot be used.
        """
        if not -len(self._rows) <= i < len(self._rows):
            raise IndexError(f"row {i} out of range for {len(self._rows)} rows")
        row = self._rows[i]
        # Checked before the image so a captionless row costs no decoding.
        texts = _clean_texts(row.texts)
        if not texts:
            raise SampleError("empty_caption", f"{self.path}:{row.line}")
        image = decode_image(self.root / row.image, str(self.root / row.image))
        return Sample(image=image, texts=texts, meta=dict(row.meta), key=row.image)

    # -- parsing ------------------------------------------------------------------------

    def _missing_column(self, column: str, present: list[str], where: str) -> ClipforgeError:
        listed = ", ".join(repr(c) for c in present) or "none"
        return ClipforgeError(f"{where}: no column {column!r}; columns present: {listed}")

    def _read_delimited(self, delimiter: str) -> list[_Row]:
        rows: list[_Row] = []
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would
        # otherwise become part of the first column's name.
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            # strict: an unterminated quote would otherwise silently swallow the rest of
            # the file into one field.
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise ClipforgeError(f"{self.path}:1: {exc}") from None
            if header is None:
                raise ClipforgeError(f"{self.path}: empty manifest (no header row)")
            header = [h.strip() for h in header]
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise ClipforgeError(f"{self.path}:1: duplicate column {duplicates[0]!r}")
            for column in (self.image_key, *self.caption_keys):
                if column not in header:
                    raise self._missing_column(column, header, str(self.path))
            image_idx = header.index(self.image_key)
            caption_idx = [header.index(k) for k in self.caption_keys]
            special = self._special_columns()
            last_line = reader.line_num
            while True:
                # A quoted field may span lines, so a row starts where the last one ended.
                line = last_line + 1
                try:
                    fields = next(reader, None)
                except csv.Error as exc:
                    raise ClipforgeError(f"{self.path}:{line}: {exc}") from None
                if fields is None:
                    break
                last_line = reader.line_num
                if not fields:
                    continue  # blank line
                if len(fields) != len(header):
                    raise ClipforgeError(
                        f"{self.path}:{line}: expected {len(header)} fields "
                        f"({', '.join(header)}), found {len(fields)}"
                    )
                image = fields[image_idx].strip()
                if not image:
                    raise ClipforgeError(f"{self.path}:{line}: empty image path")
                texts = [fields[i] for i in caption_idx]
                meta: dict[str, Any] = {}
                for name, value in zip(header, fields, strict=True):
                    if name == self.image_key or name in self.caption_keys:
                        continue
                    if name == CAPTIONS_COLUMN and name in special:
                        if value.strip():
                            texts = self._parse_caption_list(value, line)
                    elif name == META_COLUMN and name in special:
                        meta.update(self._parse_meta_cell(value))
                    else:
                        meta[name] = value
                _check_weight(meta, f"{self.path}:{line}")
                rows.append(_Row(image, texts, meta, line))
        return rows

    def _special_columns(self) -> set[str]:
        # A user who names `captions` or `meta` as the image/caption column means it
        # literally, so those columns lose their special meaning then.
        return {CAPTIONS_COLUMN, META_COLUMN} - {self.image_key, *self.caption_keys}

    def _parse_caption_list(self, value: str, line: int) -> list[str]:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
            raise ClipforgeError(
                f"{self.path}:{line}: column {CAPTIONS_COLUMN!r} must hold a JSON list of "
                f"strings (pass caption_key={CAPTIONS_COLUMN!r} to read it as plain text)"
            )
        return parsed

    @staticmethod
    def _parse_meta_cell(value: str) -> dict[str, Any]:
        # A free-text `meta` column from someone else's CSV is kept as text, not rejected.
        if not value.strip():
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {META_COLUMN: value}
        return parsed if isinstance(parsed, dict) else {META_COLUMN: value}

    def _read_jsonl(self) -> list[_Row]:
        rows: list[_Row] = []
        special = self._special_columns()
        with open(self.path, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{self.path}:{line}"
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    hint = ""
                    if line == 1 and text.lstrip().startswith("["):
                        hint = "; expected one JSON object per line (JSON Lines), not an array"
                    raise ClipforgeError(
                        f"{where}: invalid JSON ({exc.msg} at column {exc.colno}){hint}"
                    ) from None
                if not isinstance(obj, dict):
                    raise ClipforgeError(
                        f"{where}: expected a JSON object, found {type(obj).__name__}"
                    )
                for column in (self.image_key, *self.caption_keys):
                    if column not in obj:
                        raise self._missing_column(column, list(obj), where)
                image = obj[self.image_key]
                if not isinstance(image, str):
                    raise ClipforgeError(f"{where}: image path must be a string")
                if not image.strip():
                    raise ClipforgeError(f"{where}: empty image path")
                texts = [t for k in self.caption_keys for t in self._json_texts(obj[k], k, where)]
                meta: dict[str, Any] = {}
                nested_meta: dict[str, Any] = {}
                for name, value in obj.items():
                    if name == self.image_key or name in self.caption_keys:
                        continue
                    if name == CAPTIONS_COLUMN and name in special:
                        captions = self._json_texts(value, name, where)
                        if captions:
                            texts = captions
                    elif name == META_COLUMN and name in special and isinstance(value, dict):
                        nested_meta = value
                    else:
                        meta[name] = value
                meta.update(nested_meta)
                _check_weight(meta, where)
                rows.append(_Row(image.strip(), texts, meta, line))
        return rows

    @staticmethod
    def _json_texts(value: Any, name: str, where: str) -> list[str]:
        if value is None:
            return []  # reported as empty_caption when loaded, like an empty string
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return list(value)
        raise ClipforgeError(f"{where}: field {name!r} must be a string or a list of strings")


# --------------------------------------------------------------------------------------------
# Tar shards
# --------------------------------------------------------------------------------------------

# Same split as webdataset's base_plus_ext: the key is everything up to the first dot of
# the file name (directories included), the extension everything after it.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

# Errors that mean "this tar stream is damaged"; tarfile lets zlib/EOF errors of
# compressed shards escape without wrapping them.
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _expand(pattern: str) -> list[str]:
    try:
        return list(braceexpand(pattern))
    except ValueError as exc:  # braceexpand.UnbalancedBracesError
        raise ClipforgeError(f"bad shard pattern {pattern!r}: {exc}") from None


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def _always(index: int) -> bool:
    return True


@dataclass(slots=True)
class RawSample:
    """The members of one tar sample as stored (``data`` is None when they were not read)."""

    shard: str
    key: str
    data: dict[str, bytes] | None


@dataclass
class _Group:
    """The members of one sample key; ``data`` is None when the caller asked to skip it."""

    key: str
    exts: set[str] = field(default_factory=set)
    data: dict[str, bytes] | None = None


def _recording_tarinfo(errors: list[Exception]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records why tarfile stopped reading headers.

    ``TarFile.next()`` ends iteration silently on an empty, short or garbage header
    anywhere past the first member, so a truncated shard would look like a short, healthy
    one. Only a zero block (``EOFHeaderError``) is a real end of archive; recording the
    last header error lets the reader tell the two apart.
    """

    class _RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as exc:
                errors.append(exc)
                raise

    return _RecordingTarInfo


_EOF_HEADER_ERROR: type[Exception] = getattr(tarfile, "EOFHeaderError", tarfile.HeaderError)


class ShardDataset:
    """Image-caption samples stored in webdataset tar shards.

    ``urls`` is one pattern or a list of them; each is brace-expanded, so
    ``"shards/train-{0000..0099}.tar"`` names 100 shards. Local shards must exist at
    construction; remote ones (``http://``, ``s3://``, ``pipe:``...) are opened with
    webdataset's ``gopen`` when read.

    Members are grouped into samples the way webdataset does it: consecutive members that
    share the name up to the first dot of the file name. A sample needs an image member
    (the first of ``image_keys`` present) and captions: a ``caption_key`` member (one
    caption per non-blank line) or, without one, a ``.json`` member with a ``captions``
    list or a ``caption`` string. The ``.json`` member, when present, becomes ``meta``
    (a ``weight`` there is the sample's loss weight and must be a number >= 0).
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | list[str] | list[os.PathLike[str]],
        caption_key: str = "txt",
        image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp"),
    ) -> None:
        patterns = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
        self._shards = [s for p in patterns for s in _expand(os.fspath(p))]
        if not self._shards:
            raise ClipforgeError("no shards given")
        self.caption_key = caption_key
        self.image_keys = tuple(k.lower() for k in image_keys)
        missing = [s for s in self._shards if not _is_remote(s) and not os.path.exists(s)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ClipforgeError(f"shard not found: {missing[0]}{more}")
        for s in self._shards:
            if not _is_remote(s) and not os.path.isfile(s):
                raise ClipforgeError(f"shard is not a file: {s}")

    @property
    def shards(self) -> list[str]:
        """The expanded shard paths or URLs, in reading order."""
        return list(self._shards)

    def __repr__(self) -> str:
        return f"ShardDataset({len(self._shards)} shards, first {self._shards[0]!r})"

    def iter_samples(self, start: int = 0) -> Iterator[Sample | SampleError]:
        """Yield one item per sample, in order across shards, never raising for bad data.

        Each item is a :class:`Sample` or, for a sample that cannot be used, a
        :class:`SampleError` with reason ``missing_image``, ``unreadable_image``,
        ``missing_caption``, ``empty_caption``, ``unreadable_caption`` (not UTF-8) or
        ``unreadable_meta`` (a ``.json`` member that is not a JSON object). A truncated or
        damaged shard yields its intact samples, then one ``truncated_shard`` error that
        stands for everything after the damage (including the sample being read when it
        was found), and reading moves on to the next shard.

        ``start`` skips the first ``start`` items (errors count as items, so positions
        are stable for resuming) without reading or decoding their members.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        position = 0
        for shard in self._shards:
            for item in self._iter_groups(shard, skip=max(0, start - position)):
                position += 1
                if isinstance(item, SampleError):
                    if position > start:
                        yield item
                elif item.data is not None:
                    yield self._build(shard, item.key, item.data)

    def read_shard(
        self, shard: str, want: Callable[[int], bool] | None = None
    ) -> Iterator[RawSample | SampleError]:
        """Yield one undecoded item per sample of one shard, in tar order, never raising.

        Sample ``i`` of the shard has its members read only when ``want(i)`` (default:
        always); otherwise it comes with ``data=None`` and costs a header seek. Errors are
        the same ``truncated_shard`` items :meth:`iter_samples` yields, and count as items,
        so the item count of a shard does not depend on ``want``. :meth:`decode` turns an
        item into a :class:`Sample`; keeping the two apart lets a shuffle buffer hold
        compact encoded bytes and decode only what it emits.
        """
        for item in self._iter_groups(shard, want=want or _always):
            if isinstance(item, SampleError):
                yield item
            else:
                yield RawSample(shard, item.key, item.data)

    def count_shard(self, shard: str) -> int:
        """The number of items :meth:`read_shard` yields for ``shard``, from headers only."""
        return sum(1 for _ in self._iter_groups(shard, skip=-1))

    def decode(self, raw: RawSample) -> Sample | SampleError:
        """Decode an item of :meth:`read_shard` read with data; never raises for bad data."""
        if raw.data is None:
            raise ValueError(f"{raw.shard}:{raw.key} was read without its data")
        return self._build(raw.shard, raw.key, raw.data)

    def count_samples(self) -> int:
        """The number of items :meth:`iter_samples` yields, from the tar headers alone.

        No member is read or decoded (local shards are walked by seeking from header to
        header). A damaged shard counts its intact samples plus one for its
        ``truncated_shard`` error, so ``count_samples() == len(list(iter_samples()))``.
        """
        total = 0
        for shard in self._shards:
            for _ in self._iter_groups(shard, skip=-1):
                total += 1
        return total

    # -- internals ----------------------------------------------------------------------

    def _open(self, shard: str, errors: list[Exception], stack: ExitStack) -> tarfile.TarFile:
        tarinfo = _recording_tarinfo(errors)
        if _is_remote(shard):
            from webdataset import gopen

            # Remote streams cannot seek, so they are read in tarfile's stream mode; the
            # TarFile does not close a stream it was handed, hence the ExitStack.
            stream = stack.enter_context(gopen(shard, "rb"))
            return stack.enter_context(tarfile.open(fileobj=stream, mode="r|*", tarinfo=tarinfo))
        # Random-access mode seeks over the data of members nobody asked for.
        return stack.enter_context(tarfile.open(shard, mode="r:*", tarinfo=tarinfo))

    def _iter_groups(
        self, shard: str, skip: int = 0, want: Callable[[int], bool] | None = None
    ) -> Iterator[_Group | SampleError]:
        """Yield the sample groups of one shard, then a SampleError if it is damaged.

        The first ``skip`` groups come without data (nothing is read for them); a
        negative ``skip`` skips all. ``want``, when given, replaces ``skip``: group ``i``
        is read only when ``want(i)``. A group is only yielded once the next key starts or
        the archive ends cleanly, because until then more of its members may follow.
        """
        header_errors: list[Exception] = []
        wanted = {self.caption_key, "json", *self.image_keys}
        index = 0
        group: _Group | None = None
        with ExitStack() as stack:
            try:
                tf = self._open(shard, header_errors, stack)
            except _TAR_ERRORS as exc:
                yield SampleError("truncated_shard", f"{shard}: cannot open ({exc})")
                return
            while True:
                try:
                    member = tf.next()
                except _TAR_ERRORS as exc:
                    yield self._damaged(shard, index, exc)
                    return
                if member is None:
                    break
                if not member.isfile():
                    continue
                match = _MEMBER_NAME.match(member.name)
                if match is None:
                    continue  # no extension, or a hidden file such as macOS's ._foo
                key, ext = match.group(1), match.group(2)
                # A repeated extension under the same key starts a new sample, as two
                # consecutive samples with equal keys must not be merged into one.
                if group is None or key != group.key or ext in group.exts:
                    if group is not None:
                        yield group
                        index += 1
                    read = want(index) if want is not None else 0 <= skip <= index
                    group = _Group(key, data={} if read else None)
                group.exts.add(ext)
                if group.data is not None and ext.lower() in wanted:
                    try:
                        f = tf.extractfile(member)
                        group.data[ext.lower()] = f.read() if f is not None else b""
                    except _TAR_ERRORS as exc:
                        yield self._damaged(shard, index, exc)
                        return
        # next() returns None both at a real end of archive and when it gives up on a bad
        # header; only a zero block means the shard is complete.
        if header_errors and not isinstance(header_errors[-1], _EOF_HEADER_ERROR):
            yield self._damaged(shard, index, header_errors[-1])
            return
        if group is not None:
            yield group

    @staticmethod
    def _damaged(shard: str, index: int, exc: Exception) -> SampleError:
        reason = str(exc) or type(exc).__name__
        return SampleError("truncated_shard", f"{shard}: damaged after {index} samples ({reason})")

    def _build(self, shard: str, key: str, data: dict[str, bytes]) -> Sample | SampleError:
        label = f"{shard}:{key}"
        image_ext = next((e for e in self.image_keys if e in data), None)
        if image_ext is None:
            return SampleError("missing_image", label)
        meta: dict[str, Any] = {}
        if "json" in data:
            try:
                meta = json.loads(data["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = None  # type: ignore[assignment]
            if not isinstance(meta, dict):
                return SampleError("unreadable_meta", f"{label} (.json is not a JSON object)")
        # Captions come from the caption member (one per line); a shard without one may
        # keep them in the .json member instead, as a "captions" list or a "caption".
        json_texts = _json_captions(meta)
        if self.caption_key in data:
            try:
                texts = _clean_texts(data[self.caption_key].decode("utf-8").splitlines())
            except UnicodeDecodeError:
                return SampleError("unreadable_caption", f"{label} (not UTF-8)")
        elif json_texts is not None:
            texts = _clean_texts(json_texts)
        else:
            return SampleError("missing_caption", label)
        if not texts:
            return SampleError("empty_caption", label)
        if json_texts is not None:
            meta.pop(CAPTIONS_COLUMN, None)
            meta.pop("caption", None)
        if "weight" in meta and not _is_weight(meta["weight"]):
            return SampleError("bad_weight", f"{label} (weight {meta['weight']!r})")
        try:
            image = decode_image(data[image_ext], f"{label}.{image_ext}")
        except SampleError as exc:
            return exc
        return Sample(image=image, texts=texts, meta=meta, key=key)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class FolderDataset:
    """Images in a folder tree, each captioned by a sidecar file with the same stem.

    ``cat.jpg`` takes its captions from ``cat.txt`` (one per non-blank line) or, when
    there is none, from ``cat.json`` (a ``captions`` list or a ``caption`` string; its
    other fields, such as ``weight``, become :attr:`Sample.meta`). Images are found
    recursively and sorted by relative path, so indices are stable. An image without a
    sidecar is a ``missing_caption`` sample error, not a data set error.
    """

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
                texts = _json_captions(meta) or []
                if not js.is_file():
                    raise SampleError("missing_caption", f"{path} (no {txt.name} or {js.name})")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SampleError("unreadable_caption", f"{path} sidecar ({exc})") from None
        meta.pop(CAPTIONS_COLUMN, None)
        meta.pop("caption", None)
        if "weight" in meta and not _is_weight(meta["weight"]):
            raise SampleError("bad_weight", f"{path} (weight {meta['weight']!r})")
        return _clean_texts(texts), meta

    def load(self, i: int) -> Sample:
        """Decode image ``i`` and read its sidecar captions."""
        texts, meta = self.record(i)
        if not texts:
            raise SampleError("empty_caption", str(self.image_path(i)))
        image = decode_image(self.image_path(i), str(self.image_path(i)))
        return Sample(image=image, texts=texts, meta=meta, key=self._images[i])


# --------------------------------------------------------------------------------------------
# Choosing a reader
# --------------------------------------------------------------------------------------------


def _is_brace_pattern(path: str) -> bool:
    return "{" in path and _expand(path) != [path]


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
        raise ClipforgeError(f"dataset not found: {text} (expected {_ACCEPTED_FORMS})")
    raise ClipforgeError(f"cannot read {text} as a dataset; expected {_ACCEPTED_FORMS}")
