"""WiSE-FT weight ensembling and ONNX export of the encoders."""

import numpy as np
import pytest
import torch

from clipforge.cli.main import main
from clipforge.models import create_model, load, save_checkpoint
from clipforge.models.wise import interpolate
from tests.tolerance import reorder_bound


@pytest.fixture
def two_models(tmp_path, micro_args):
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"m{seed}.pt"
        save_checkpoint(create_model("tiny", dict(micro_args)), path, "clipforge")
        paths.append(path)
    return paths


def test_wise_endpoints_and_mean(two_models, tmp_path):
    zs, ft = (load(p).state_dict() for p in two_models)
    for alpha, want in ((0.0, zs), (1.0, ft)):
        out = tmp_path / f"wise{alpha}.pt"
        assert main(["wise", *map(str, two_models), "--alpha", str(alpha), "--out", str(out)]) == 0
        got = load(out).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), alpha  # bit for bit
    half = interpolate(load(two_models[0]), load(two_models[1]), 0.5).state_dict()
    for k, v in zs.items():
        if v.is_floating_point():
            # Halving is exact in binary floating point; the sum rounds once, as does the
            # sum in (zs + ft) / 2, so the two agree exactly.
            assert torch.equal(half[k], (v + ft[k]) / 2), k
        else:
            assert torch.equal(half[k], ft[k]), k


def test_wise_refusals(two_models, tmp_path, micro_args, capsys):
    other = tmp_path / "other.pt"
    save_checkpoint(create_model("tiny", {**micro_args, "embed_dim": 16}), other, "clipforge")
    out = tmp_path / "w.pt"
    assert main(["wise", str(two_models[0]), str(other), "--out", str(out)]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["wise", *map(str, two_models), "--alpha", "1.5", "--out", str(out)]) == 2
    assert "--alpha: must be a number in [0, 1]" in capsys.readouterr().err
    assert main(["wise", *map(str, two_models), "--out", str(two_models[0]), "--overwrite"]) == 2
    assert not out.exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from tests.conftest import MICRO_ARGS

    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    ckpt = tmp / "m.pt"
    save_checkpoint(create_model("tiny", dict(MICRO_ARGS)), ckpt, "clipforge")
    assert main(["export", str(ckpt), "--to", "onnx", "--out", str(tmp / "onnx")]) == 0
    return ckpt, tmp / "onnx"


def test_onnx_outputs_equal_pytorch(exported):
    import onnxruntime as ort

    ckpt, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        ".clipforge-output", "image.onnx", "merges.txt", "model.yaml", "text.onnx",
        "tokenizer_config.json", "tokenizer_info.json", "vocab.json",
    ]  # fmt: skip
    model = load(ckpt)
    g = torch.Generator().manual_seed(3)
    # Another batch size than the export's example (2): the batch axis is dynamic.
    pixels = torch.randn(5, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 400, (5, 24), generator=g)
    tokens[torch.arange(5), torch.tensor([3, 7, 23, 1, 12])] = 49407  # end tokens
    tokens[0, 4:] = 0  # padding after the end token
    with torch.no_grad():
        want_image = model.encode_image(pixels, normalize=True).numpy()
        want_text = model.encode_text(tokens, normalize=True).numpy()
    got_image = ort.InferenceSession(str(folder / "image.onnx")).run(
        None, {"pixels": pixels.numpy()}
    )[0]
    got_text = ort.InferenceSession(str(folder / "text.onnx")).run(
        None, {"tokens": tokens.numpy()}
    )[0]
    # The 1e-4. The same float32 graph summed in other orders (onnxruntime's
    # kernels) differs by at most the rounding bound of the chain behind each entry (about
    # 10^3 terms: conv stem 3 x 3 x 16, width 32, MLP 128 per layer) of unit-norm
    # magnitude, 1.2e-4 (tests/tolerance.py), so 1e-4 asks no more than rounding allows.
    tol = 1e-4
    assert tol <= reorder_bound(1000, 1.0)
    assert np.abs(got_image - want_image).max() <= tol
    assert np.abs(got_text - want_text).max() <= tol


def test_export_refuses_an_existing_folder(exported, capsys):
    ckpt, folder = exported
    assert main(["export", str(ckpt), "--to", "onnx", "--out", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_export_tokenizes_as_the_model(exported):
    from clipforge.models import tokenizer_for
    from clipforge.models.onnx_runtime import OnnxEncoders

    ckpt, folder = exported
    model = load(ckpt)
    texts = ["a photo of a RED circle.", "", " ".join(["three striped stars"] * 12)]
    encoders = OnnxEncoders(folder)  # reads the export alone: tokenizer and graphs
    want = tokenizer_for(model)(texts)
    assert torch.equal(encoders.tokenizer(texts), want)  # id for id, context 24
    assert want.shape == (3, 24)
    with torch.no_grad():
        ref = model.encode_text(want, normalize=True)
    # The export's ids through text.onnx: the model's features, to the reordering bound of
    # the float32 chain (as test_onnx_outputs_equal_pytorch).
    tol = reorder_bound(1000, 1.0)
    assert (encoders.encode_texts(texts) - ref).abs().max() <= tol
