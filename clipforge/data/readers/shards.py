"""webdataset tar shards: one sample per member group, read as a stream."""

from __future__ import annotations

import functools
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from braceexpand import braceexpand

from clipforge.data.readers.common import (
    CAPTIONS_COLUMN,
    clean_texts,
    decode_image,
    is_weight,
    json_captions,
)
from clipforge.data.sample import Sample, SampleError
from clipforge.errors import ClipforgeError

if TYPE_CHECKING:
    from PIL import Image

# Same split as webdataset's base_plus_ext: the key is everything up to the first dot of
# the file name (directories included), the extension everything after it.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

# Errors that mean "this tar stream is damaged"; tarfile lets zlib/EOF errors of
# compressed shards escape without wrapping them.
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def expand_pattern(pattern: str) -> list[str]:
    try:
        return list(braceexpand(pattern))
    except ValueError as exc:  # braceexpand.UnbalancedBracesError
        raise ClipforgeError(f"bad shard pattern {pattern!r}: {exc}") from None


# Compressed shards (tarfile's "r:*" reads them) are recognised by their magic bytes and
# checked after decompressing their first block.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}


def tar_problem(path: str) -> str | None:
    """Why ``path`` is not a tar shard at all (its first block is no tar header), or None.

    Only the first block is read (decompressed, for a compressed shard); damage further
    in is the reader's business, reported as ``truncated_shard``.
    """
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
        kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
        if kind is not None:
            f.seek(0)
            opener = {"gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "lzma": lzma.LZMAFile}[kind]
            try:
                head = opener(fileobj=f).read(tarfile.BLOCKSIZE)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                return f"{kind} data that does not decompress: {exc}"
    if not head:
        return "empty file"
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except _EOF_HEADER_ERROR:
        return None  # a zero block: an empty archive, which is a valid one
    except tarfile.HeaderError as exc:
        return f"no tar header at its start: {exc}"
    return None


def _check_some_shard_opens(shards: list[str]) -> None:
    """Refuse, at once and naming the file, a data set none of whose shards is a tar.

    A single bad shard among good ones is skipped as ``truncated_shard`` like any damaged
    shard, but when no shard opens, the reader would otherwise go round and round the
    data skipping until the skip limit. Reading stops at the first good shard.
    """
    if not shards or any(is_remote(s) for s in shards):
        return  # a remote shard may be fine; it is only opened when read
    first = None
    for shard in shards:
        why = tar_problem(shard)
        if why is None:
            return
        first = first or (shard, why)
    assert first is not None
    n = len(shards) - 1
    others = (
        "" if n == 0 else "; nor is the other shard" if n == 1 else f"; nor is any of the other {n}"
    )
    raise ClipforgeError(f"{first[0]} is not a tar shard ({first[1]}){others}")


def is_remote(url: str) -> bool:
    """Whether a shard name is a URL or ``pipe:`` command rather than a local file."""
    return "://" in url or url.startswith("pipe:")


# The image extensions a sample is read from, first present wins (ShardDataset's default).
IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


@functools.lru_cache(maxsize=64)
def _member_table(shard: str, mtime_ns: int, size: int) -> dict[str, dict[str, tarfile.TarInfo]]:
    """Each key of the local tar ``shard`` -> its members' headers by lower-case extension.

    Built from the headers alone (tarfile seeks over the data), once per shard version:
    ``mtime_ns`` and ``size`` are in the cache key so that a rewritten shard is read
    again. Only the first sample of a repeated key is kept, and a damaged shard keeps the
    members before the damage: a lookup by key cannot name a later one.
    """
    table: dict[str, dict[str, tarfile.TarInfo]] = {}
    # Grouped as the reader groups them: consecutive members of one key, a repeated
    # extension starting the next sample.
    key_now: str | None = None
    exts_now: set[str] = set()
    keep = False
    try:
        with tarfile.open(shard, mode="r:*") as tf:
            for member in tf:
                match = _MEMBER_NAME.match(member.name) if member.isfile() else None
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2)
                if key != key_now or ext in exts_now:
                    key_now, exts_now = key, set()
                    keep = key not in table
                    if keep:
                        table[key] = {}
                exts_now.add(ext)
                if keep:
                    table[key].setdefault(ext.lower(), member)
    except _TAR_ERRORS:
        pass  # the intact members before the damage stay addressable
    return table


def read_sample(shard: str, key: str, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The members of sample ``key`` of the local tar ``shard`` (those of ``exts`` only,
    when given), by lower-case extension.

    For random access by a sample's name (a thumbnail of an embedded shard member, say),
    where :class:`ShardDataset` reads shards as streams. The shard's member table is read
    once and cached (see :func:`_member_table`); each call then reads only that sample's
    members. Raises ``SampleError("missing_image", ...)`` when the shard or the key is not
    there and ``SampleError("truncated_shard", ...)`` when a member cannot be read.
    """
    label = f"{shard}:{key}"
    try:
        st = os.stat(shard)
    except OSError:
        raise SampleError("missing_image", f"{label} (no such shard)") from None
    members = _member_table(shard, st.st_mtime_ns, st.st_size).get(key)
    if members is None:
        raise SampleError("missing_image", f"{label} (no such sample in the shard)")
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(shard, mode="r:*") as tf:
            for ext, member in members.items():
                if exts is not None and ext not in exts:
                    continue
                f = tf.extractfile(member)
                out[ext] = f.read() if f is not None else b""
    except _TAR_ERRORS as exc:
        raise SampleError("truncated_shard", f"{label} ({exc})") from None
    return out


def read_sample_image(
    shard: str, key: str, image_keys: tuple[str, ...] = IMAGE_KEYS
) -> Image.Image:
    """The decoded RGB image of sample ``key`` of the local tar ``shard`` (the first of
    ``image_keys`` it has); raises :class:`SampleError` as :func:`read_sample` does, and
    ``missing_image`` for a sample without an image member."""
    data = read_sample(shard, key, image_keys)
    ext = next((e for e in image_keys if e in data), None)
    if ext is None:
        raise SampleError("missing_image", f"{shard}:{key} (no image member)")
    return decode_image(data[ext], f"{shard}:{key}.{ext}")


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

    streaming = True  # read in order as a stream, not by index (see open_source)

    def __init__(
        self,
        urls: str | os.PathLike[str] | list[str] | list[os.PathLike[str]],
        caption_key: str = "txt",
        image_keys: tuple[str, ...] = IMAGE_KEYS,
    ) -> None:
        patterns = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
        self._shards = [s for p in patterns for s in expand_pattern(os.fspath(p))]
        if not self._shards:
            raise ClipforgeError("no shards given")
        self.caption_key = caption_key
        self.image_keys = tuple(k.lower() for k in image_keys)
        missing = [s for s in self._shards if not is_remote(s) and not os.path.exists(s)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ClipforgeError(f"shard not found: {missing[0]}{more}")
        for s in self._shards:
            if not is_remote(s) and not os.path.isfile(s):
                raise ClipforgeError(f"shard is not a file: {s}")
        _check_some_shard_opens(self._shards)

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
        if is_remote(shard):
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
        json_texts = json_captions(meta)
        if self.caption_key in data:
            try:
                texts = clean_texts(data[self.caption_key].decode("utf-8").splitlines())
            except UnicodeDecodeError:
                return SampleError("unreadable_caption", f"{label} (not UTF-8)")
        elif json_texts is not None:
            texts = clean_texts(json_texts)
        else:
            return SampleError("missing_caption", label)
        if not texts:
            return SampleError("empty_caption", label)
        if json_texts is not None:
            meta.pop(CAPTIONS_COLUMN, None)
            meta.pop("caption", None)
        if "weight" in meta and not is_weight(meta["weight"]):
            return SampleError("bad_weight", f"{label} (weight {meta['weight']!r})")
        try:
            image = decode_image(data[image_ext], f"{label}.{image_ext}")
        except SampleError as exc:
            return exc
        return Sample(image=image, texts=texts, meta=meta, key=key)
