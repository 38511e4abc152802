"""CSV, TSV and JSON Lines manifests: one row per image, random access."""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.data.readers.common import (
    CAPTIONS_COLUMN,
    MANIFEST_SUFFIXES,
    META_COLUMN,
    check_weight,
    clean_texts,
    decode_image,
)
from clipforge.data.sample import Sample, SampleError
from clipforge.errors import ClipforgeError

# csv refuses fields over 128 KiB by default. JSON Lines has no such limit, and a long
# caption is cut to its first characters when a batch is made, whatever the format, so
# CSV and TSV take any field that fits in memory (the C long limit of the csv module).
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


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

    streaming = False  # random access by index (see open_source)

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
        return clean_texts(row.texts), dict(row.meta)

    def load(self, i: int) -> Sample:
        """Load row ``i``: decode its image to RGB and return the :class:`Sample`.

        Raises :class:`SampleError` with reason ``empty_caption``, ``missing_image`` or
        ``unreadable_image`` for a row that cannot be used.
        """
        if not -len(self._rows) <= i < len(self._rows):
            raise IndexError(f"row {i} out of range for {len(self._rows)} rows")
        row = self._rows[i]
        # Checked before the image so a captionless row costs no decoding.
        texts = clean_texts(row.texts)
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
        if csv.field_size_limit() < _CSV_FIELD_LIMIT:
            csv.field_size_limit(_CSV_FIELD_LIMIT)
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
                check_weight(meta, f"{self.path}:{line}")
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
                check_weight(meta, where)
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
