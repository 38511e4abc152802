"""CLIP's byte-level BPE tokenizer.

This is the text tokenizer of OpenAI's CLIP (and of OpenCLIP's CLIP models). Given the
same merges file it produces exactly the same ids as ``open_clip.tokenize``:

* Text is cleaned first: ``ftfy.fix_text``, HTML entities unescaped twice, whitespace
  runs collapsed to one space, ends stripped, then lower-cased.
* A regex splits the clean text into words: the contractions ``'s 't 're 've 'm 'll 'd``,
  runs of letters, single digits and runs of other non-space characters.
* Each word's UTF-8 bytes are mapped to printable characters (so BPE never sees
  whitespace or control characters), and byte-pair merges are applied in rank order. The
  last symbol of every word carries a ``</w>`` suffix.

The vocabulary has 49408 entries: 256 byte symbols, the same 256 with ``</w>``, 48894
merged symbols and the two special tokens ``<start_of_text>`` (49406) and
``<end_of_text>`` (49407).

As in CLIP, a text that literally contains ``<start_of_text>`` or ``<end_of_text>`` gets
the special id there.

Speed: training captions repeat a lot, so the tokenizer keeps two bounded LRU caches, one
from words to their BPE ids and one from whole texts (up to 1000 characters) to their ids;
both are shared by all tokenizers of the same merges file. Plain ASCII text without ``&``
skips ftfy and HTML unescaping, which cannot change it. A batch is turned into a tensor
with a single vectorised numpy scatter.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` ships with this package; it comes from
OpenAI's CLIP under the MIT licence (see ``LICENSE-clip-bpe.txt`` next to it).
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import regex
import torch

from clipforge.errors import ClipforgeError

__all__ = [
    "DEFAULT_BPE_PATH",
    "Tokenizer",
    "bytes_to_unicode",
    "clip_bpe_files",
    "get_tokenizer",
    "is_clip_bpe",
]

DEFAULT_BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
"""The merges file that defines CLIP's vocabulary."""

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"

# CLIP uses the first 49152 - 256 - 2 merges of the file (line 0 is a version header).
_NUM_MERGES = 49152 - 256 - 2

# Word pattern of CLIP. The special tokens come first, so a text that literally contains
# "<start_of_text>" gets the special id, as in CLIP. IGNORECASE is part of the original
# pattern and matters even after lower-casing (e.g. "'\u017f" matches "'s").
_WORD_PATTERN = (
    rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
)

_WORD_CACHE_SIZE = 1 << 18
_TEXT_CACHE_SIZE = 100_000
# Longer texts bypass the text cache, which bounds its memory (captions are short).
_MAX_CACHED_TEXT_CHARS = 1000


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte value to a printable unicode character.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves;
    the remaining 68 bytes (whitespace, control characters, ...) map in order to
    ``chr(256)``, ``chr(257)``, ... This keeps BPE symbols free of characters that the
    merges file cannot represent, while staying reversible.

    The insertion order (printable bytes first, then the rest) defines the ids of the 256
    byte symbols in the vocabulary. The returned dict is shared: do not modify it.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code)
            next_code += 1
    return mapping


class _Codec:
    """Vocabulary tables, word pattern and caches of one merges file.

    One instance per file is shared by every :class:`Tokenizer` that uses it, whatever
    their context lengths, so the tables are built once and the caches are shared.
    """

    def __init__(self, path: str) -> None:
        merges = _read_merges(path)
        byte_encoder = bytes_to_unicode()
        byte_symbols = list(byte_encoder.values())
        symbols = [
            *byte_symbols,
            *(s + END_OF_WORD for s in byte_symbols),
            *(a + b for a, b in merges),
            SOT_TOKEN,
            EOT_TOKEN,
        ]
        # Built like CLIP's tables (a later duplicate wins) so ids match exactly.
        self.encoder: dict[str, int] = {s: i for i, s in enumerate(symbols)}
        self.decoder: dict[int, str] = {i: s for s, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = byte_encoder
        self.byte_decoder: dict[str, int] = {c: b for b, c in byte_encoder.items()}
        # Translation table for the ASCII fast path of word_ids (one byte per character).
        self.ascii_table = str.maketrans({chr(b): byte_encoder[b] for b in range(128)})
        self.word_re = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        # LRU caches (functools' C implementation): word -> ids and text -> ids.
        self.word_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._word_ids)
        self.cached_text_ids = functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)(self.compute_text_ids)

    def bpe(self, symbols: list[str]) -> list[str]:
        """Apply merges to a word's symbols, lowest rank first, until none applies.

        Each step merges every non-overlapping occurrence (left to right) of the adjacent
        pair with the lowest rank, exactly as CLIP does.
        """
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank = None
            best_pair = None
            for pair in itertools.pairwise(symbols):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_pair = r, pair
            if best_pair is None:
                break
            first, second = best_pair
            merged = first + second
            out: list[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
        return symbols

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word (a regex match of the clean text)."""
        if word == SOT_TOKEN or word == EOT_TOKEN:
            return (self.encoder[word],)
        if word.isascii():
            chars = word.translate(self.ascii_table)
        else:
            enc = self.byte_encoder
            chars = "".join(enc[b] for b in word.encode("utf-8"))
        symbols = [*chars[:-1], chars[-1] + END_OF_WORD]
        encoder = self.encoder
        return tuple(encoder[s] for s in self.bpe(symbols))

    def text_ids(self, text: str) -> tuple[int, ...]:
        """Ids of a whole text, without special tokens; short texts go through the cache."""
        if isinstance(text, str) and len(text) > _MAX_CACHED_TEXT_CHARS:
            return self.compute_text_ids(text)
        return self.cached_text_ids(text)

    def compute_text_ids(self, text: str) -> tuple[int, ...]:
        """Ids of a whole text, without special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be str, got {type(text).__name__}")
        word_ids = self.word_ids
        ids: list[int] = []
        for word in self.word_re.findall(_clean(text)):
            ids.extend(word_ids(word))
        return tuple(ids)


def _read_merges(path: str) -> list[tuple[str, str]]:
    """The merges CLIP uses from a gzipped merges file (line 0 is a version header)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise ClipforgeError(f"BPE merges file not found: {path}") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ClipforgeError(f"cannot read BPE merges file {path}: {e}") from None
    lines = lines[1 : _NUM_MERGES + 1]
    if len(lines) < _NUM_MERGES:
        raise ClipforgeError(
            f"BPE merges file {path} has {len(lines)} lines of merges, expected {_NUM_MERGES}"
        )
    merges: list[tuple[str, str]] = []
    for line_no, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ClipforgeError(
                f"malformed BPE merges file {path}: line {line_no} is {line!r}, "
                "expected two symbols"
            )
        merges.append((parts[0], parts[1]))
    return merges


@functools.lru_cache(maxsize=8)
def _get_codec(path: str) -> _Codec:
    return _Codec(path)


def _check_context_length(context_length: Any) -> int:
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int | np.integer)
        or context_length < 2
    ):
        raise ClipforgeError(
            f"context_length must be an integer >= 2 (room for the start and end tokens), "
            f"got {context_length!r}"
        )
    return int(context_length)


_ASCII_LINE_WHITESPACE = str.maketrans("", "", "\t\n\r")


def _needs_fixing(text: str) -> bool:
    """Whether ftfy and HTML unescaping could change ``text`` (after whitespace clean-up).

    They cannot for printable ASCII without ``&``, plus tab and line breaks: ftfy only
    touches non-ASCII characters, control characters, HTML entities and line breaks (and
    line breaks become single spaces anyway). Skipping them for such texts is a large
    speed-up, since ``ftfy.fix_text`` dominates the cost of tokenizing a new caption.
    """
    if not text.isascii() or "&" in text:
        return True
    return not (text.isprintable() or text.translate(_ASCII_LINE_WHITESPACE).isprintable())


def _clean(text: str) -> str:
    """CLIP's text clean-up: fix mojibake, unescape HTML twice, collapse whitespace, lower."""
    if _needs_fixing(text):
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    # split() also strips the ends, as CLIP's .strip() calls do.
    return " ".join(text.split()).lower()


class Tokenizer:
    """CLIP's byte-level BPE tokenizer (id-for-id compatible with ``open_clip.tokenize``).

    Args:
        context_length: Default length ``L`` of the rows returned by :meth:`__call__`;
            must be at least 2.
        bpe_path: A gzipped merges file; defaults to the one shipped with clipforge.

    Example:
        >>> tok = Tokenizer(context_length=8)
        >>> tok("a photo").tolist()
        [[49406, 320, 1125, 49407, 0, 0, 0, 0]]
    """

    vocab_size: int
    sot_token_id: int
    eot_token_id: int
    context_length: int

    def __init__(
        self, context_length: int = 77, bpe_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.context_length = _check_context_length(context_length)
        path = bpe_path if bpe_path is not None else DEFAULT_BPE_PATH
        self.bpe_path = os.path.abspath(os.fspath(path))
        self._codec = _get_codec(self.bpe_path)
        self.vocab_size = len(self._codec.encoder)
        self.sot_token_id = self._codec.encoder[SOT_TOKEN]
        self.eot_token_id = self._codec.encoder[EOT_TOKEN]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle by arguments (the caches hold bound methods, which do not pickle), so a
        # tokenizer can be sent to spawned DataLoader workers.
        return (type(self), (self.context_length, self.bpe_path))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(context_length={self.context_length}, "
            f"vocab_size={self.vocab_size})"
        )

    # ------------------------------------------------------------------ public API
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end tokens and without truncation."""
        return list(self._codec.text_ids(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into text.

        Start tokens are dropped, and everything from the first end token on is dropped
        (that is where a row of :meth:`__call__` ends and its zero padding starts). Id 0 is
        also the real token ``!``, so zeros before an end token (or in a sequence without
        one, such as the output of :meth:`encode`) are kept. Each end-of-word marker
        becomes a space, the result is stripped, and invalid UTF-8 becomes U+FFFD.
        """
        if hasattr(ids, "tolist"):  # torch tensors and numpy arrays
            ids = ids.tolist()
        decoder = self._codec.decoder
        parts: list[str] = []
        for raw in ids:
            if not isinstance(raw, int | np.integer) or isinstance(raw, bool):
                raise ClipforgeError(
                    f"decode expects a flat sequence of integer ids, got an element {raw!r}"
                )
            i = int(raw)
            if i == self.eot_token_id:
                break
            if i == self.sot_token_id:
                continue
            symbol = decoder.get(i)
            if symbol is None:
                raise ClipforgeError(
                    f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            parts.append(symbol)
        byte_decoder = self._codec.byte_decoder
        data = bytes(byte_decoder[c] for c in "".join(parts))
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Tokenize one text or a batch into a ``LongTensor`` of shape ``[N, L]``.

        Each row is ``<start_of_text>``, the text's ids, ``<end_of_text>``, then zeros. A
        text too long for ``L`` is cut so that the end token lands in the last position
        (the same rows ``open_clip.tokenize`` makes). ``L`` is ``context_length`` if given,
        else the tokenizer's default. A single string gives one row.
        """
        length = (
            self.context_length if context_length is None else _check_context_length(context_length)
        )
        if isinstance(texts, str):
            texts = [texts]
        cached = self._codec.cached_text_ids
        uncached = self._codec.compute_text_ids
        keep = length - 2
        limit = _MAX_CACHED_TEXT_CHARS
        try:
            rows = [(cached(t) if len(t) <= limit else uncached(t))[:keep] for t in texts]
        except TypeError:
            bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
            if not bad:
                raise
            raise TypeError(f"texts must be str, got {bad[0]}") from None
        n = len(rows)
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=n)
        flat = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.int64, count=int(counts.sum())
        )
        out = np.zeros((n, length), dtype=np.int64)
        out[:, 0] = self.sot_token_id
        positions = np.arange(length)
        out[(positions >= 1) & (positions <= counts[:, None])] = flat
        out[np.arange(n), counts + 1] = self.eot_token_id
        return torch.from_numpy(out)

    def cache_info(self) -> dict[str, Any]:
        """Hit/miss statistics of the word and text caches.

        The caches belong to the merges file, so all tokenizers using it share them.
        """
        return {
            "word": self._codec.word_ids.cache_info(),
            "text": self._codec.cached_text_ids.cache_info(),
        }

    def clear_cache(self) -> None:
        """Empty the word and text caches (shared by all tokenizers of this merges file)."""
        self._codec.word_ids.cache_clear()
        self._codec.cached_text_ids.cache_clear()


@functools.lru_cache(maxsize=16)
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    """The shared CLIP tokenizer for ``context_length`` (one instance per length)."""
    return Tokenizer(context_length=context_length)


# Hugging Face's CLIPTokenizer names the special tokens this way in vocab.json.
_HF_SPECIALS = {SOT_TOKEN: "<|startoftext|>", EOT_TOKEN: "<|endoftext|>"}


def clip_bpe_files() -> dict[str, bytes]:
    """CLIP's BPE as a Hugging Face ``CLIPTokenizer`` reads it: ``vocab.json`` and
    ``merges.txt`` (the version header and the merges CLIP uses)."""
    codec = _get_codec(str(DEFAULT_BPE_PATH))
    vocab = {_HF_SPECIALS.get(s, s): i for s, i in codec.encoder.items()}
    with gzip.open(DEFAULT_BPE_PATH, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : _NUM_MERGES + 1]  # after the file's own header
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("\n".join(["#version: 0.2", *merges]) + "\n").encode(),
    }


def is_clip_bpe(vocab: dict[str, Any], merges: str) -> bool:
    """Whether a Hugging Face ``vocab.json`` (parsed) and ``merges.txt`` (text) are CLIP's
    BPE: the same merges in the same order (which fix every id) and the same vocabulary."""
    codec = _get_codec(str(DEFAULT_BPE_PATH))
    lines = [ln for ln in merges.split("\n") if ln and not ln.startswith("#version")]
    theirs = [tuple(ln.split()) for ln in lines[:_NUM_MERGES]]
    if theirs != list(codec.ranks):
        return False
    return {_HF_SPECIALS.get(s, s): i for s, i in codec.encoder.items()} == vocab
