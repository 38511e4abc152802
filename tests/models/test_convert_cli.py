"""``clipforge convert`` and the loader's error messages."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from clipforge.cli.main import main
from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, load
from tests.models.test_convert import (
    assert_parity,
    clip_config,
    hf_siglip_model,
    inputs,
    openclip_model,
    openclip_outputs,
    ours,
    perturb,
)
from tests.spiece import add_spiece, spiece_model


def _same_weights(a: CLIP, b: CLIP) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_convert_all_directions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """openclip file -> clipforge -> openclip folder -> hf -> clipforge, weights unchanged."""
    src = tmp_path / "oc.pt"
    torch.save(openclip_model().state_dict(), src)
    steps = [
        (src, tmp_path / "cf.pt", "clipforge", "openclip"),
        (tmp_path / "cf.pt", tmp_path / "oc_dir", "openclip", "clipforge"),
        (tmp_path / "oc_dir", tmp_path / "hf_dir", "hf", "openclip"),
        (tmp_path / "hf_dir", tmp_path / "back.pt", "clipforge", "hf-clip"),
        (tmp_path / "hf_dir", tmp_path / "oc.safetensors", "openclip", "hf-clip"),
    ]
    # Bare OpenCLIP state dicts carry no heads or activation: the caller says them.
    given = {"act": "quick_gelu", "vision.heads": 1, "text.heads": 1}
    first = load(src, overrides=given)
    for a, b, to, fmt in steps:
        extra = ["--model-args", "act=quick_gelu,vision.heads=1,text.heads=1"] if a == src else []
        assert main(["convert", str(a), str(b), "--to", to, *extra]) == 0
        out = capsys.readouterr().out
        assert f"({fmt}):" in out and f"wrote {b}" in out
        bare = b.suffix == ".safetensors"
        _same_weights(first, load(b, overrides=given if bare else None))


def test_convert_siglip_to_clipforge_and_back(tmp_path: Path) -> None:
    hf_siglip_model().save_pretrained(tmp_path / "hf")
    add_spiece(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "s.pt"), "--to", "clipforge"]) == 0
    assert main(["convert", str(tmp_path / "s.pt"), str(tmp_path / "hf2"), "--to", "hf"]) == 0
    _same_weights(load(tmp_path / "hf"), load(tmp_path / "hf2"))
    # The tokenizer travels with the weights: stored in the checkpoint, written back out.
    spec = load(tmp_path / "hf").tokenizer_spec
    assert spec is not None and spec.kind == "sentencepiece"
    assert load(tmp_path / "s.pt").tokenizer_spec == spec == load(tmp_path / "hf2").tokenizer_spec
    assert (tmp_path / "hf2" / "spiece.model").read_bytes() == spiece_model()
    cfg = load(tmp_path / "s.pt").cfg
    assert cfg == load(tmp_path / "hf2").cfg
    assert (cfg.vision.pool, cfg.text.causal, cfg.act) == ("map", False, "gelu_tanh")


def test_convert_model_args_override(tmp_path: Path) -> None:
    # A bare OpenCLIP state dict of a GELU model needs act=gelu (and its heads) to match.
    peer = openclip_model(quick_gelu=False)
    torch.save(peer.state_dict(), tmp_path / "gelu.pt")
    args = ["convert", str(tmp_path / "gelu.pt"), str(tmp_path / "cf.pt"), "--to", "clipforge"]
    assert main([*args, "--model-args", "act=gelu"]) == 2  # heads still unknown: refused
    assert main([*args, "--model-args", "act=gelu,vision.heads=1,text.heads=1"]) == 0
    model = load(tmp_path / "cf.pt")
    assert model.cfg.act == "gelu"
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_text("not a checkpoint"), r"{p} is not a checkpoint clipforge reads"),
        (
            lambda p: torch.save(torch.nn.Linear(2, 2).state_dict(), p),
            r"{p}: not a CLIP checkpoint clipforge knows \(tensors like weight, bias\)",
        ),
        (
            lambda p: torch.save([1, 2], p),
            r"{p} is not a checkpoint clipforge reads: it holds a list, not a state dict",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({"a": 1})),  # a plain pickle, not torch.save
            r"{p} is not a checkpoint clipforge reads",
        ),
    ],
)
def test_convert_refuses_a_wrong_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, make, expected: str
) -> None:
    bad = tmp_path / "bad.pt"
    make(bad)
    assert main(["convert", str(bad), str(tmp_path / "out.pt"), "--to", "clipforge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert re.match(r"clipforge: error: " + expected.format(p=re.escape(str(bad))), err), err
    assert not (tmp_path / "out.pt").exists()


def test_missing_and_unexpected_tensors_are_listed(tmp_path: Path) -> None:
    sd = dict(openclip_model().state_dict())
    del sd["visual.ln_post.weight"], sd["transformer.resblocks.1.mlp.c_fc.bias"]
    sd["visual.extra"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(ClipforgeError) as e:
        load(path, overrides={"act": "quick_gelu", "vision.heads": 1, "text.heads": 1})
    assert str(e.value) == (
        f"{path}: openclip checkpoint does not fit the architecture (image 32px/8 width 64 x2, "
        "text width 64 x2, embed 32): missing tensors: visual.ln_post.weight, "
        "transformer.resblocks.1.mlp.c_fc.bias; unexpected tensors: visual.extra"
    )


def test_wrong_arch_is_a_shape_error(tmp_path: Path) -> None:
    path = tmp_path / "oc.pt"
    torch.save(openclip_model().state_dict(), path)
    with pytest.raises(ClipforgeError, match=r"tensor shapes do not fit .*visual.conv1.weight"):
        load(path, arch=clip_config().with_overrides({"vision.width": 128}))


def test_bare_clipforge_state_dict_needs_arch(tmp_path: Path) -> None:
    model = perturb(CLIP(clip_config()))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ClipforgeError, match="without model_config; pass arch"):
        load(tmp_path / "sd.pt")
    _same_weights(model, load(tmp_path / "sd.pt", arch=clip_config()))
