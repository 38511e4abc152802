"""A Hugging Face SigLIP folder tokenizes with its own SentencePiece model, end to end.

The folder is a random micro ``SiglipModel`` (tests/models/test_convert.py) saved by
transformers, with the SentencePiece model trained in tests/spiece.py beside it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.hf_tokenizers import SentencePieceTokenizer, TokenizerSpec
from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import model_fingerprint
from clipforge.models import load, tokenizer_for
from clipforge.models.loading import tokenizer_spec_of
from tests.models.test_convert import CTX, assert_parity, hf_outputs, hf_siglip_model, inputs, ours
from tests.spiece import add_spiece, spiece_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")

CAPTIONS = [
    "A photo of a RED circle.",
    "three big, striped stars; above two small triangles!",
    " ".join(["a dark dog on the left"] * 6),  # longer than the context: cut
    "",
]


@pytest.fixture
def siglip_folder(tmp_path: Path):
    peer = hf_siglip_model()
    peer.save_pretrained(tmp_path / "siglip")
    add_spiece(tmp_path / "siglip")
    return peer, tmp_path / "siglip"


def test_siglip_folder_embeds_text_with_its_sentencepiece_ids(siglip_folder):
    peer, folder = siglip_folder
    model = load(folder)
    tok = tokenizer_for(model)
    assert isinstance(tok, SentencePieceTokenizer) and tok.context_length == CTX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
        want = hf_tok(CAPTIONS, padding="max_length", truncation=True, max_length=CTX,
                      return_tensors="pt").input_ids  # fmt: skip
    ids = tok(CAPTIONS)
    assert torch.equal(ids, want)  # transformers' own tokenizer of the folder, id for id
    assert (ids[2] == tok.eot_token_id).nonzero().flatten().tolist() == [CTX - 1]
    # Text features from the text alone: clipforge's model on its ids equals transformers'
    # SiglipModel on transformers' ids, in float64, to the rounding bound of the towers
    # (assert_parity: ~1e-9 of the scale; a wrong id moves a feature by O(1)). SigLIP pools
    # the last position, which every row fills (end token or padding).
    x, _ = inputs()
    assert_parity(ours(model, x, ids), hf_outputs(peer, x, want))


def test_siglip_folder_without_a_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    hf_siglip_model().save_pretrained(tmp_path / "bare")
    with pytest.raises(ClipforgeError) as e:
        load(tmp_path / "bare")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "bare") in msg
    assert "spiece.model" in msg and "tokenizer.json" in msg
    texts = tmp_path / "q.txt"
    texts.write_text("a red circle\n")
    out = tmp_path / "emb"
    args = ["embed", str(tmp_path / "bare"), "--texts", str(texts), "--out", str(out)]
    capsys.readouterr()  # transformers' save progress bar
    assert main([*args, "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without its text tokenizer" in err[0]


def test_fingerprint_changes_with_the_tokenizer(siglip_folder):
    _, folder = siglip_folder
    model = load(folder)
    with_sp = model_fingerprint(model)
    spec = model.tokenizer_spec
    cased = TokenizerSpec(spec.kind, spec.data, (("do_lower_case", False),))
    assert dict(cased.options)["do_lower_case"] is False and cased != spec
    model.tokenizer_spec = cased
    other_options = model_fingerprint(model)
    model.tokenizer_spec = None  # the same weights under CLIP's BPE
    clip_bpe = model_fingerprint(model)
    assert isinstance(tokenizer_for(model), Tokenizer)
    assert len({with_sp, other_options, clip_bpe}) == 3


def test_the_tokenizer_is_read_without_the_model(siglip_folder, tmp_path):
    # What training reads before it builds the model (--init's tokenizer).
    _, folder = siglip_folder
    assert tokenizer_spec_of(folder) == load(folder).tokenizer_spec
    hf_siglip_model().save_pretrained(tmp_path / "bare")
    with pytest.raises(ClipforgeError, match="without its text tokenizer"):
        tokenizer_spec_of(tmp_path / "bare", "--init")


def test_a_tokenizer_larger_than_the_text_tower_is_refused(tmp_path):
    import json

    cfg = hf_siglip_model().config.to_dict()
    cfg["text_config"]["vocab_size"] = 20  # below the tokenizer's 56 pieces
    peer = transformers.SiglipModel(transformers.SiglipConfig(**{
        k: cfg[k] for k in ("text_config", "vision_config")
    }))  # fmt: skip
    peer.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(spiece_model())
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["vocab_size"] == 20
    with pytest.raises(ClipforgeError, match="more than the text tower's 20"):
        load(tmp_path)


def test_clip_bpe_files_in_a_siglip_folder_must_be_clips(tmp_path):
    # What clipforge writes for a SigLIP-style model trained on CLIP's BPE: that BPE's
    # vocab.json + merges.txt, which transformers' CLIPTokenizer reads too.
    from clipforge.data.tokenizer import clip_bpe_files, get_tokenizer

    hf_siglip_model().save_pretrained(tmp_path)
    files = clip_bpe_files()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    model = load(tmp_path)
    assert model.tokenizer_spec is None and tokenizer_for(model) is get_tokenizer(CTX)
    peer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = "a photo of a Cat, on the left."
    assert peer(text).input_ids == [
        49406, *tokenizer_for(model).encode(text), 49407
    ]  # fmt: skip
    lines = files["merges.txt"].decode().split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # another merge order: other ids
    (tmp_path / "merges.txt").write_text("\n".join(lines))
    with pytest.raises(ClipforgeError, match="not CLIP's BPE"):
        load(tmp_path)


def test_clip_folders_keep_clips_bpe(tmp_path):
    # Hub CLIP folders ship a tokenizer.json of CLIP's BPE (no ftfy clean-up, padded with
    # the end token): clipforge keeps its own exact BPE for them, and their fingerprint.
    from tests.models.test_convert import hf_clip_model

    hf_clip_model().save_pretrained(tmp_path)
    before = model_fingerprint(load(tmp_path))
    add_spiece(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")  # not even read
    model = load(tmp_path)
    assert model.tokenizer_spec is None and isinstance(tokenizer_for(model), Tokenizer)
    assert model_fingerprint(model) == before
