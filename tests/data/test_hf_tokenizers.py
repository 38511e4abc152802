"""SigLIP's tokenizers (clipforge.data.hf_tokenizers) against transformers' own, id for id.

The SentencePiece model is trained in the test (tests/spiece.py); the tokenizer.json one
is a small BPE trained with the ``tokenizers`` package, with a start and an end token
added by its post-processor (as Gemma's, SigLIP 2's, adds a start token).
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from clipforge.data.hf_tokenizers import (
    JsonTokenizer,
    SentencePieceTokenizer,
    TokenizerSpec,
    find_tokenizer,
)
from clipforge.errors import ClipforgeError
from tests.spiece import WORDS, add_spiece, spiece_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")  # transformers' SiglipTokenizer needs it

CTX = 16
# Case, punctuation, whitespace runs, unknown characters, the word mark itself, special
# tokens written in the text (kept, with the whitespace beside them eaten), an empty text
# and texts longer than the context (cut, the end token kept last).
TEXTS = [
    "A Photo of a RED circle.",
    "a, b; c!! dogs?",
    "  spaced   out\ttext\n",
    "",
    "x</s>y",
    "</s>",
    "cat </s> dog",
    "\u00fcn\u00efcode caf\u00e9",
    "aaaaa",
    " ".join(["red circle"] * 40),
    "\u2581weird\u2581mark",
    "<unk> hi",
    "big!red?square...",
    "a photo of a cat</s>",
    "red circle " * 7 + "</s>",  # the end token lands exactly in the last kept position
    "Three BIG striped stars, above two small dotted triangles; left of a dark dog!",
]


def _hf_ids(tok, texts: list[str], length: int) -> torch.Tensor:
    with warnings.catch_warnings():  # SiglipTokenizer warns about texts ending in </s>
        warnings.simplefilter("ignore")
        out = tok(texts, padding="max_length", truncation=True, max_length=length,
                  return_tensors="pt")  # fmt: skip
    return out.input_ids


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("length", [CTX, 64])
def test_sentencepiece_matches_transformers_siglip_tokenizer(tmp_path, legacy, length):
    add_spiece(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"legacy": legacy}))
    want = _hf_ids(transformers.SiglipTokenizer(str(tmp_path / "spiece.model"), legacy=legacy),
                   TEXTS, length)  # fmt: skip
    spec = find_tokenizer(tmp_path)
    assert spec is not None and spec.kind == "sentencepiece"
    tok = spec.build(length)
    assert isinstance(tok, SentencePieceTokenizer)
    got = tok(TEXTS)
    assert got.dtype == torch.long and got.shape == (len(TEXTS), length)
    assert torch.equal(got, want)
    # One at a time gives the same rows as the batch.
    assert torch.equal(torch.cat([tok(t) for t in TEXTS]), want)


@pytest.mark.parametrize("side", ["left", "right"])
def test_sentencepiece_pads_on_the_side_the_folder_says(tmp_path, side):
    add_spiece(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"padding_side": side}))
    hf = transformers.SiglipTokenizer(str(tmp_path / "spiece.model"), padding_side=side)
    tok = find_tokenizer(tmp_path).build(CTX)
    assert torch.equal(tok(TEXTS), _hf_ids(hf, TEXTS, CTX))
    assert (tok("red")[0, 0] == tok.pad_token_id) == (side == "left")
    # Right is the default, left out of the spec: folders read before keep their digest.
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert (find_tokenizer(tmp_path).digest == TokenizerSpec(
        "sentencepiece", tok.spec.data, tok.spec.options).digest) == (side == "right")  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"padding_side": "middle"}))
    with pytest.raises(ClipforgeError, match="unknown padding_side 'middle'"):
        find_tokenizer(tmp_path)


def test_sentencepiece_conventions():
    spec = TokenizerSpec("sentencepiece", spiece_model())
    tok = spec.build(8)
    # SigLIP: no start token, </s> (id 1) ends the text and pads the row.
    assert (tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (None, 1, 1)
    row = tok("Red, CIRCLE!")[0].tolist()
    assert row == tok("red circle")[0].tolist()  # case and punctuation do not count
    n = len(tok.encode("red circle"))
    assert row[n:] == [1] * (8 - n) and 1 not in row[:n]
    long = tok(" ".join(WORDS))[0].tolist()
    assert long[-1] == 1 and 1 not in long[:-1]  # cut to 7 ids, then the end token
    assert long[:-1] == tok.encode(" ".join(WORDS))[:7]
    assert tok.decode(tok("a red circle")[0]) == "a red circle"
    assert tok.vocab_size == len(tok._sp)


def test_options_come_from_the_folder_and_change_the_digest(tmp_path):
    add_spiece(tmp_path)
    plain = find_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = find_tokenizer(tmp_path)
    assert plain != cased and plain.digest != cased.digest
    assert cased.build(CTX)("RED")[0].tolist() != plain.build(CTX)("RED")[0].tolist()
    # special_tokens_map.json wins over tokenizer_config.json, as in transformers.
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": {"content": "<pad>"}})
    )
    padded = find_tokenizer(tmp_path).build(CTX)
    assert padded.pad_token_id == 0 and padded("red")[0, -1] == 0
    # The source path is for messages only.
    moved = TokenizerSpec(plain.kind, plain.data, plain.options, source="elsewhere")
    assert moved == plain and moved.digest == plain.digest


def test_spec_survives_a_checkpoint_payload_and_tokenizers_pickle(tmp_path):
    add_spiece(tmp_path)
    spec = find_tokenizer(tmp_path)
    torch.save({"tokenizer": spec.to_payload()}, tmp_path / "x.pt")
    back = TokenizerSpec.from_payload(torch.load(tmp_path / "x.pt", weights_only=True)["tokenizer"])
    assert back == spec and back.source == spec.source
    tok = spec.build(CTX)
    assert torch.equal(pickle.loads(pickle.dumps(tok))(TEXTS), tok(TEXTS))  # DataLoader workers
    with pytest.raises(ClipforgeError, match="tokenizer entry"):
        TokenizerSpec.from_payload({"kind": "sentencepiece", "data": "not bytes"}, "m.pt")


def test_bad_files_are_refused_naming_them(tmp_path):
    assert find_tokenizer(tmp_path) is None  # no tokenizer file: the caller decides
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ClipforgeError, match="spiece.model"):
        find_tokenizer(tmp_path)
    (tmp_path / "spiece.model").unlink()
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(ClipforgeError, match="tokenizer.json"):
        find_tokenizer(tmp_path)


def _json_tokenizer(folder: Path) -> None:
    """A BPE tokenizer.json with a lower-casing normalizer and <bos> ... </s> added."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "</s>", "<unk>", "<bos>"]
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A </s>", special_tokens=[("<bos>", 3), ("</s>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))


@pytest.mark.parametrize("length", [CTX, 64])
def test_tokenizer_json_matches_transformers_fast_tokenizer(tmp_path, length):
    _json_tokenizer(tmp_path)
    peer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), pad_token="<pad>"
    )
    want = _hf_ids(peer, TEXTS, length)
    spec = find_tokenizer(tmp_path)
    assert spec is not None and spec.kind == "json"
    tok = spec.build(length)
    assert isinstance(tok, JsonTokenizer) and tok.pad_token_id == 0
    assert torch.equal(tok(TEXTS), want)
    long = tok(" ".join(["red circle"] * 40))[0].tolist()
    assert long[0] == 3 and long[-1] == 1  # cut inside the text: both special tokens kept
    assert torch.equal(pickle.loads(pickle.dumps(tok))(TEXTS), want)


def test_tokenizer_json_without_a_padding_token_is_refused(tmp_path):
    _json_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ClipforgeError, match="no padding token"):
        find_tokenizer(tmp_path)


def test_spiece_model_is_preferred_to_tokenizer_json(tmp_path):
    _json_tokenizer(tmp_path)
    add_spiece(tmp_path)
    assert find_tokenizer(tmp_path).kind == "sentencepiece"
