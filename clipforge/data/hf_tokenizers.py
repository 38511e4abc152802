"""The text tokenizers of Hugging Face model folders other than CLIP's BPE.

A SigLIP checkpoint's text tower was trained on the ids of its own vocabulary; giving it
CLIP's BPE ids is a silent wrong answer. A folder says which tokenizer it has by the files
it ships (looked for in this order, see :func:`find_tokenizer`):

* ``spiece.model``: a SentencePiece model, tokenized as ``transformers.SiglipTokenizer``
  does it (:class:`SentencePieceTokenizer`), with the options of ``tokenizer_config.json``
  and ``special_tokens_map.json`` (lower-casing, the end, unknown and padding tokens).
* ``tokenizer.json``: a Hugging Face fast tokenizer (SigLIP 2's Gemma vocabulary, for
  instance), run by the ``tokenizers`` package (:class:`JsonTokenizer`), padded on the
  side transformers pads it: ``tokenizer_config.json``'s ``padding_side``, else the
  file's own, else the default of the tokenizer class (left for Gemma's). In a SigLIP 2
  folder (``model_type: siglip2``, or ``tokenizer_class: Siglip2Tokenizer``) it is run
  as ``transformers.Siglip2Tokenizer`` runs it: lower-cased, ``<pad>`` by default.

Both give rows of the model's context length: the text's ids, its end token (as the
tokenizer appends it), then the padding id; too long a text is cut first. A tokenizer is
described by a :class:`TokenizerSpec` (the file's bytes and the options), which is what a
model carries, what its fingerprint hashes and what a clipforge checkpoint stores, so a
converted model tokenizes as its source did without the source folder.

``sentencepiece`` is an optional dependency (``pip install 'clipforge[siglip]'``);
``tokenizers`` comes with ``transformers``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.errors import ClipforgeError

__all__ = [
    "TOKENIZER_FILES",
    "JsonTokenizer",
    "SentencePieceTokenizer",
    "TokenizerSpec",
    "find_tokenizer",
]

TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
"""The tokenizer files :func:`find_tokenizer` reads, in the order it looks for them."""

SPIECE_UNDERLINE = "\u2581"  # SentencePiece's word-start mark
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as data: its ``kind`` (``sentencepiece`` or ``json``), the bytes of its
    file, the options read beside it (sorted ``(key, value)`` pairs) and where it came
    from (for messages only: it takes no part in equality or the digest)."""

    kind: str
    data: bytes
    options: tuple[tuple[str, Any], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("sentencepiece", "json"):
            raise ClipforgeError(f"unknown tokenizer kind {self.kind!r} (sentencepiece, json)")
        # Defaults written out, so a spec that states them equals one that leaves them out
        # (a model's spec and the one read back from the folder it was written to).
        defaults = _SP_DEFAULTS if self.kind == "sentencepiece" else {}
        options = {**defaults, **dict(self.options)}
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenizerSpec) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @functools.cached_property
    def digest(self) -> str:
        """A digest of everything that decides the ids (not of ``source``)."""
        h = hashlib.sha1(self.kind.encode())
        h.update(json.dumps(self.options, sort_keys=True).encode())
        h.update(self.data)
        return h.hexdigest()[:16]

    @property
    def file_name(self) -> str:
        """The file name a Hugging Face folder gives this tokenizer."""
        return "spiece.model" if self.kind == "sentencepiece" else "tokenizer.json"

    def describe(self) -> str:
        """One line for messages: the kind and where it came from."""
        what = "SentencePiece" if self.kind == "sentencepiece" else "Hugging Face tokenizer.json"
        return f"{what} tokenizer" + (f" of {self.source}" if self.source else "")

    def build(self, context_length: int) -> SentencePieceTokenizer | JsonTokenizer:
        """The tokenizer for rows of ``context_length`` (one instance per spec and length)."""
        return _build(self, context_length)

    def to_payload(self) -> dict[str, Any]:
        """Plain values for a checkpoint (``torch.load(weights_only=True)`` reads them)."""
        return {"kind": self.kind, "data": self.data, "options": dict(self.options),
                "source": self.source}  # fmt: skip

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], where: str = "checkpoint") -> TokenizerSpec:
        """The spec :meth:`to_payload` wrote; a malformed entry is refused naming ``where``."""
        try:
            data, options = payload["data"], payload.get("options") or {}
            if not isinstance(data, bytes) or not isinstance(options, dict):
                raise TypeError("data must be bytes and options a dict")
            return cls(str(payload["kind"]), data, tuple(sorted(options.items())),
                       str(payload.get("source", "")))  # fmt: skip
        except (KeyError, TypeError, AttributeError) as e:
            raise ClipforgeError(f"{where}: cannot read its tokenizer entry: {e}") from None

    def hf_files(self) -> dict[str, bytes]:
        """The files that give this tokenizer to a Hugging Face folder (``transformers``
        and :func:`find_tokenizer` read them back): the tokenizer file and its config."""
        config: dict[str, Any] = dict(self.options)
        if self.kind == "sentencepiece":
            config["tokenizer_class"] = "SiglipTokenizer"
        else:
            # The class that lower-cases for transformers (and for find_tokenizer), else
            # the plain fast tokenizer (without a class, transformers would take a SigLIP
            # folder's SentencePiece one); and the padding side stated, as class defaults
            # differ.
            lower = config.pop("lowercase", False)
            config["tokenizer_class"] = "Siglip2Tokenizer" if lower else "PreTrainedTokenizerFast"
            config.setdefault("padding_side", "right")
        return {
            self.file_name: self.data,
            "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode(),
        }


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipforgeError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClipforgeError(f"{path} does not hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as transformers writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


# The options of tokenizer_config.json / special_tokens_map.json that change ids, with
# SiglipTokenizer's defaults (legacy is transformers' own default for SentencePiece).
_SP_DEFAULTS: dict[str, Any] = {
    "do_lower_case": True,
    "legacy": True,
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "</s>",
    "additional_special_tokens": [],
}


# transformers 5's tokenizer classes whose padding side is left by default.
_LEFT_PADDING_CLASSES = frozenset(
    {"GemmaTokenizer", "Siglip2Tokenizer", "LlamaTokenizer", "CodeLlamaTokenizer",
     "CohereTokenizer", "XLNetTokenizer"}
)  # fmt: skip


def _file_sides(data: bytes) -> tuple[str | None, str | None]:
    """The padding and truncation sides a ``tokenizer.json`` states itself (``None``: it
    has no such setting); an unreadable file is left for the tokenizer to refuse."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    sides = []
    for key in ("padding", "truncation"):
        setting = obj.get(key) if isinstance(obj, dict) else None
        direction = setting.get("direction") if isinstance(setting, dict) else None
        sides.append(str(direction).lower() if direction else None)
    return sides[0], sides[1]


def find_tokenizer(folder: str | Path, model_type: str | None = None) -> TokenizerSpec | None:
    """The tokenizer a Hugging Face folder ships (see the module docstring), or ``None``
    when it has none of :data:`TOKENIZER_FILES`. ``model_type`` is the folder's
    ``config.json`` model type: ``siglip2`` tokenizes as transformers' Siglip2Tokenizer."""
    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json")
    special = _read_json(folder / "special_tokens_map.json")
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ClipforgeError(f"cannot read {path}: {e}") from None
        options: dict[str, Any] = {}
        if name == "spiece.model":
            for key, default in _SP_DEFAULTS.items():
                if key == "additional_special_tokens":
                    continue
                value = special.get(key, config.get(key, default))
                options[key] = _token_text(value) if key.endswith("_token") else bool(value)
                if options[key] is None:
                    raise ClipforgeError(f"{folder}: cannot read its {key} ({value!r})")
            extra = config.get("additional_special_tokens") or []
            options["additional_special_tokens"] = [t for t in map(_token_text, extra) if t]
            options.update(_padding_side(config.get("padding_side"), "right", folder))
            spec = TokenizerSpec("sentencepiece", data, tuple(sorted(options.items())), str(path))
        else:
            # The tokenizer class transformers runs the file through decides what its
            # config leaves open: a siglip2 folder's is Siglip2Tokenizer whatever
            # tokenizer_class says (the hub's say Gemma's), which lower-cases and pads with
            # <pad>; otherwise the class named. Options left out when default, so older
            # specs keep their digests.
            cls = str(config.get("tokenizer_class") or "").removesuffix("Fast")
            siglip2 = model_type == "siglip2" or cls == "Siglip2Tokenizer"
            if siglip2:
                cls = "Siglip2Tokenizer"
            pad = _token_text(special.get("pad_token", config.get("pad_token")))
            if pad is None and siglip2:
                pad = "<pad>"
            if pad is not None:
                options["pad_token"] = pad
            padding, truncation = _file_sides(data)
            # transformers' order: tokenizer_config.json, the file's own setting, the
            # class's default (left for Gemma's and SigLIP 2's, among others).
            default = "left" if cls in _LEFT_PADDING_CLASSES else "right"
            options.update(_padding_side(config.get("padding_side") or padding, default, folder))
            cut = config.get("truncation_side") or truncation or "right"
            if cut != "right":
                raise ClipforgeError(
                    f"{folder}: truncation_side {cut!r} is not supported (clipforge cuts the "
                    "end of a text)"
                )
            if siglip2:
                options["lowercase"] = True
            spec = TokenizerSpec("json", data, tuple(sorted(options.items())), str(path))
        spec.build(2)  # a corrupt file is refused here, naming it, not at the first query
        return spec
    return None


def _padding_side(side: Any, default: str, folder: Path) -> dict[str, str]:
    """The padding option of a spec: ``{"padding_side": "left"}`` or none (right, left
    out so that specs written before the option keep their digests)."""
    side = side or default
    if side not in ("left", "right"):
        raise ClipforgeError(f"{folder}: unknown padding_side {side!r} (left, right)")
    return {"padding_side": "left"} if side == "left" else {}


@functools.lru_cache(maxsize=16)
def _build(spec: TokenizerSpec, context_length: int) -> SentencePieceTokenizer | JsonTokenizer:
    cls = SentencePieceTokenizer if spec.kind == "sentencepiece" else JsonTokenizer
    return cls(spec, context_length)


def _require(package: str, spec: TokenizerSpec) -> Any:
    """The optional ``package`` a tokenizer file needs, or a one-line refusal saying how
    to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ClipforgeError(
            f"{spec.describe()} needs the {package} package: "
            f"pip install 'clipforge[siglip]' (or pip install {package})"
        ) from None


def _check_length(context_length: Any) -> int:
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or context_length < 1
    ):
        raise ClipforgeError(f"context_length must be an integer >= 1, got {context_length!r}")
    return context_length


def _rows(
    id_lists: Sequence[Sequence[int]], length: int, pad_id: int, left: bool = False
) -> torch.Tensor:
    out = torch.full((len(id_lists), length), pad_id, dtype=torch.long)
    for i, ids in enumerate(id_lists):
        if ids:
            row = torch.tensor(ids, dtype=torch.long)
            if left:
                out[i, length - len(ids) :] = row
            else:
                out[i, : len(ids)] = row
    return out


class _FromSpec:
    """Pickling and repr of a tokenizer built from a :class:`TokenizerSpec`: neither the
    SentencePiece processor nor a ``tokenizers`` object pickles, so DataLoader workers
    rebuild the tokenizer from its spec."""

    spec: TokenizerSpec
    context_length: int
    vocab_size: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.spec, self.context_length))

    def _batch(
        self, texts: str | Sequence[str], context_length: int | None
    ) -> tuple[list[str], int]:
        # One text or a batch, checked, and the row length of this call.
        length = self.context_length if context_length is None else _check_length(context_length)
        batch = [texts] if isinstance(texts, str) else list(texts)
        bad = [type(t).__name__ for t in batch if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be str, got {bad[0]}")
        return batch, length

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(context_length={self.context_length}, "
            f"vocab_size={self.vocab_size})"
        )


class SentencePieceTokenizer(_FromSpec):
    """SigLIP's SentencePiece tokenizer, id for id as ``transformers.SiglipTokenizer``
    with ``padding="max_length", truncation=True, max_length=context_length``.

    A text is lower-cased (``do_lower_case``), stripped of ASCII punctuation and of
    repeated whitespace; special tokens written in it literally (``</s>``) keep their id.
    Each row is the text's ids cut to ``L - 1``, the end token ``</s>`` (not a second
    one when the text already ends with it) and the padding id up to ``L`` (in front of
    the text with ``padding_side="left"``). There is no start token (``sot_token_id`` is
    ``None``).
    """

    sot_token_id: int | None = None

    def __init__(self, spec: TokenizerSpec, context_length: int = 64) -> None:
        spm = _require("sentencepiece", spec)
        self.spec = spec
        self.context_length = _check_length(context_length)
        opts = dict(spec.options)
        self.do_lower_case = bool(opts.get("do_lower_case", True))
        self.pad_left = opts.get("padding_side") == "left"
        try:
            sp = spm.SentencePieceProcessor(model_proto=spec.data)
        except (RuntimeError, OSError, TypeError) as e:
            raise ClipforgeError(f"cannot read the {spec.describe()}: {e}") from None
        if not opts.get("legacy", True):
            # transformers' non-legacy mode switches SentencePiece's dummy prefix off.
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto.FromString(sp.serialized_model_proto())
            if proto.normalizer_spec.add_dummy_prefix:
                proto.normalizer_spec.add_dummy_prefix = False
                sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._sp = sp
        self.vocab_size = sp.get_piece_size()
        self.eos_token = str(opts.get("eos_token", "</s>"))
        self.unk_token = str(opts.get("unk_token", "<unk>"))
        self.pad_token = str(opts.get("pad_token", self.eos_token))
        specials = [self.eos_token, self.unk_token, self.pad_token,
                    *opts.get("additional_special_tokens", [])]  # fmt: skip
        self._special_ids = {t: sp.piece_to_id(t) for t in specials}
        self.eot_token_id = self._special_ids[self.eos_token]
        self.pad_token_id = self._special_ids[self.pad_token]
        # Longest first, so a special token that contains another is matched whole.
        alternatives = sorted(set(specials), key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._unk_length = len(sp.encode(self.unk_token, out_type=str))

    def _canonical(self, text: str) -> str:
        """SiglipTokenizer's canonical text: lower case, no punctuation, single spaces."""
        if self.do_lower_case:
            text = text.lower()
        return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()

    def _pieces(self, chunk: str) -> list[str]:
        # Encoded behind the unknown token, whose pieces are then dropped: SentencePiece
        # would otherwise strip the leading word mark the text was given.
        pieces = self._sp.encode(self.unk_token + self._canonical(chunk), out_type=str)
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the end token and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be str, got {type(text).__name__}")
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        chunks = self._special_re.split(text)  # odd positions hold special tokens
        # Special tokens eat the whitespace beside them (transformers' lstrip/rstrip).
        for i in range(1, len(chunks), 2):
            chunks[i - 1] = chunks[i - 1].rstrip()
            chunks[i + 1] = chunks[i + 1].lstrip()
        pieces: list[str] = []
        special: list[bool] = []
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            if i % 2:
                pieces.append(chunk)
                special.append(True)
            else:
                new = self._pieces(chunk)
                pieces.extend(new)
                special.extend([False] * len(new))
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and special[1]:
            pieces, special = pieces[1:], special[1:]
        piece_to_id = self._sp.piece_to_id
        return [
            self._special_ids[p] if s else piece_to_id(p)
            for p, s in zip(pieces, special, strict=True)
        ]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first end token (padding is the end token in SigLIP)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        kept: list[int] = []
        for i in ids:
            if int(i) == self.eot_token_id:
                break
            kept.append(int(i))
        return self._sp.decode(kept)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Tokenize one text or a batch into a ``LongTensor`` of shape ``[N, L]``."""
        texts, length = self._batch(texts, context_length)
        rows = []
        for t in texts:
            ids = self.encode(t)[: length - 1]
            if not ids or ids[-1] != self.eot_token_id:
                ids.append(self.eot_token_id)
            rows.append(ids)
        return _rows(rows, length, self.pad_token_id, left=self.pad_left)


class JsonTokenizer(_FromSpec):
    """A Hugging Face fast tokenizer (``tokenizer.json``), run by the ``tokenizers``
    package as ``transformers.PreTrainedTokenizerFast`` runs it with
    ``padding="max_length", truncation=True, max_length=context_length``: the file's own
    normalizer, pre-tokenizer and special tokens (its post-processor), cut to ``L`` with
    the special tokens kept, padded with the padding token of ``tokenizer_config.json``
    (else the file's padding setting). The spec's ``lowercase`` option puts a lower-casing
    step before the file's normalizer (as ``transformers.Siglip2Tokenizer`` does, which
    adds none to a file without a normalizer), ``padding_side="left"`` pads in front."""

    sot_token_id: int | None = None

    def __init__(self, spec: TokenizerSpec, context_length: int = 64) -> None:
        _HFTokenizer = _require("tokenizers", spec).Tokenizer
        self._cls = _HFTokenizer
        self.spec = spec
        self.context_length = _check_length(context_length)
        try:
            tok = _HFTokenizer.from_str(spec.data.decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exceptions for a bad file
            raise ClipforgeError(f"cannot read the {spec.describe()}: {e}") from None
        opts = dict(spec.options)
        if opts.get("lowercase") and tok.normalizer is not None:
            normalizers = _require("tokenizers.normalizers", spec)
            tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), tok.normalizer])
        self.pad_left = opts.get("padding_side") == "left"
        pad = opts.get("pad_token")
        if pad is None and tok.padding is not None:
            pad = tok.padding.get("pad_token")
        pad_id = tok.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            raise ClipforgeError(
                f"the {spec.describe()} names no padding token that is in its vocabulary "
                "(pad_token of tokenizer_config.json); rows cannot be padded"
            )
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._truncating: dict[int, Any] = {}
        self.pad_token_id = int(pad_id)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eos = next((t for t in ("</s>", "<eos>", "<|endoftext|>") if tok.token_to_id(t) is not None),
                   None)  # fmt: skip
        self.eot_token_id = tok.token_to_id(eos) if eos is not None else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens (padding too) dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Tokenize one text or a batch into a ``LongTensor`` of shape ``[N, L]``."""
        texts, length = self._batch(texts, context_length)
        tok = self._truncating.get(length)
        if tok is None:
            # A tokenizer per length that cuts the text and keeps the special tokens (what
            # truncation=True does); shared by the calls of that length.
            tok = self._truncating[length] = self._cls.from_str(self._tok.to_str())
            tok.enable_truncation(length)
        rows = [enc.ids for enc in tok.encode_batch(texts, add_special_tokens=True)]
        return _rows(rows, length, self.pad_token_id, left=self.pad_left)
