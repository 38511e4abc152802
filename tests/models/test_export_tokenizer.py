"""The tokenizer an ONNX export carries: written beside the graphs, read back exactly.

``write_tokenizer`` / ``export_tokenizer`` need no graphs, so these run without the
exporter; tests/models/test_wise_export.py runs a full export through onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from clipforge.data.hf_tokenizers import TokenizerSpec, find_tokenizer
from clipforge.data.tokenizer import get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.models import create_model, tokenizer_for
from clipforge.models.export import TOKENIZER_INFO, write_tokenizer
from clipforge.models.onnx_runtime import export_tokenizer, tokenizer_key
from tests.conftest import MICRO_ARGS
from tests.spiece import add_gemma_json, spiece_model

TEXTS = [
    "A photo of a RED circle.",
    "three big, striped stars; above two small triangles!",
    " ".join(["a dark dog on the left"] * 8),  # longer than the context: cut
    "",
]


def micro_model(spec: TokenizerSpec | None):
    model = create_model("tiny", dict(MICRO_ARGS))
    model.tokenizer_spec = spec
    return model


def gemma_spec(tmp_path: Path) -> TokenizerSpec:
    """SigLIP 2's kind of tokenizer.json: lower-cased, padded on the left."""
    add_gemma_json(tmp_path, padding_side=None)
    spec = find_tokenizer(tmp_path, "siglip2")
    assert dict(spec.options) == {"lowercase": True, "pad_token": "<pad>", "padding_side": "left"}
    return spec


@pytest.mark.parametrize("kind", ["clip-bpe", "sentencepiece", "json"])
def test_an_export_folder_tokenizes_as_the_model(tmp_path, kind):
    if kind == "sentencepiece":
        pytest.importorskip("sentencepiece")
        spec = TokenizerSpec("sentencepiece", spiece_model())
    else:
        spec = gemma_spec(tmp_path / "src") if kind == "json" else None
    model = micro_model(spec)
    out = tmp_path / "export"
    out.mkdir()
    files = write_tokenizer(model, out)
    info = json.loads((out / TOKENIZER_INFO).read_text())
    assert info["kind"] == kind and info["context_length"] == 24
    assert sorted(p.name for p in files) == info["files"]
    tok = export_tokenizer(out)
    want = tokenizer_for(model)
    assert torch.equal(tok(TEXTS), want(TEXTS))  # id for id, rows of 24
    assert tokenizer_key(tok) == tokenizer_key(want)
    if kind == "clip-bpe":
        assert tok is get_tokenizer(24)
    else:
        assert tok.spec == spec


def test_transformers_reads_the_exported_tokenizer(tmp_path):
    # The files are the ones a Hugging Face folder holds, so transformers reads them too.
    transformers = pytest.importorskip("transformers")
    spec = gemma_spec(tmp_path / "src")
    out = tmp_path / "export"
    out.mkdir()
    write_tokenizer(micro_model(spec), out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = transformers.AutoTokenizer.from_pretrained(out)
        want = peer(TEXTS, padding="max_length", truncation=True, max_length=24,
                    return_tensors="pt").input_ids  # fmt: skip
    assert torch.equal(export_tokenizer(out)(TEXTS), want)
    assert want[3, 0] == 0 and want[3, -1] == 2  # "": padding on the left, then <bos>


def test_a_missing_or_altered_tokenizer_is_refused(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(ClipforgeError, match="export the model again"):
        export_tokenizer(out)
    write_tokenizer(micro_model(gemma_spec(tmp_path / "src")), out)
    data = json.loads((out / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz"] = len(data["model"]["vocab"]) + 10
    (out / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ClipforgeError, match="not the tokenizer the export was written with"):
        export_tokenizer(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(ClipforgeError, match="missing: tokenizer.json"):
        export_tokenizer(out)
    clip = tmp_path / "clip"
    clip.mkdir()
    write_tokenizer(micro_model(None), clip)
    merges = (clip / "merges.txt").read_text().split("\n")
    merges[1], merges[2] = merges[2], merges[1]  # another merge order: other ids
    (clip / "merges.txt").write_text("\n".join(merges))
    with pytest.raises(ClipforgeError, match="not CLIP's BPE"):
        export_tokenizer(clip)
