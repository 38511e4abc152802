"""`clipforge embed --runtime onnx`: onnxruntime on the exported encoders, against PyTorch."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from clipforge.cli.main import main
from clipforge.eval.embed import model_fingerprint
from clipforge.index.store import read_embeddings
from clipforge.models import load
from clipforge.models.onnx_runtime import OnnxEncoders
from tests.tolerance import reorder_bound

pytest.importorskip("onnxruntime")

ARGS = ["--progress", "false", "--threads", "1", "--dtype", "float32", "--shard-size", "32"]


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory, collection):
    """A float32 embedding of the collection by each runtime; the cache in a tmp folder."""
    root, model_path, _, data, _, _ = collection
    tmp = tmp_path_factory.mktemp("onnx-embed")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    # Count the batches onnxruntime encodes: the onnx run must go through its sessions.
    calls = {"image": 0, "text": 0}
    for kind in calls:
        real = getattr(OnnxEncoders, f"encode_{kind}")

        def counted(self, x, normalize=True, real=real, kind=kind):
            calls[kind] += 1
            return real(self, x, normalize)

        mp.setattr(OnnxEncoders, f"encode_{kind}", counted)
    try:
        torch_out, onnx_out = tmp / "torch", tmp / "onnx"
        assert main(["embed", str(model_path), str(data), "--out", str(torch_out), *ARGS]) == 0
        assert calls == {"image": 0, "text": 0}
        assert main(["embed", str(model_path), str(data), "--out", str(onnx_out),
                     "--runtime", "onnx", *ARGS]) == 0  # fmt: skip
        # 96 items in shards of 32, one encoder batch per shard and kind.
        assert calls == {"image": 3, "text": 3}
        yield tmp, model_path, data, torch_out, onnx_out
    finally:
        mp.undo()


def test_onnx_runtime_equals_torch_and_records_itself(onnx_run):
    tmp, model_path, _, torch_out, onnx_out = onnx_run
    t, o = read_embeddings(torch_out), read_embeddings(onnx_out)
    fp = model_fingerprint(load(model_path))
    assert (t.info["runtime"], o.info["runtime"]) == ("torch", "onnx")
    assert o.info["fingerprint"] == t.info["fingerprint"] == fp  # the same model's features
    # Exported on the fly into the cache, under the model's fingerprint.
    assert o.info["onnx"] == str((tmp / "cache" / "clipforge" / "onnx" / fp).resolve())
    assert "onnx" not in t.info
    assert o.info["precision"]["precision"] == "fp32"
    assert set(o.info["precision"]) >= {"image_parity", "text_parity"}
    assert o.rows == t.rows
    # The same float32 function as the export parity test (tests/models/test_wise_export.py)
    # summed in onnxruntime's orders: each entry of a unit feature is within the reordering
    # bound of its ~10^3-term chain (conv stem 3 x 3 x 16, width 32, MLP 128 per layer).
    tol = reorder_bound(1000, 1.0)
    assert np.abs(o.images - t.images).max() <= tol
    assert np.abs(o.texts - t.texts).max() <= tol


def test_an_export_folder_is_run_as_given_and_the_cache_reused(onnx_run, capsys):
    tmp, model_path, data, _, onnx_out = onnx_run
    cached = read_embeddings(onnx_out).info["onnx"]
    before = {
        p.name: p.stat().st_mtime_ns for p in (tmp / "cache" / "clipforge" / "onnx").iterdir()
    }
    again = tmp / "again"
    assert main(["embed", str(model_path), str(data), "--out", str(again), "--runtime", "onnx",
                 "--onnx", cached, *ARGS]) == 0  # fmt: skip
    assert f"runtime onnx ({cached})" in capsys.readouterr().out
    a, o = read_embeddings(again), read_embeddings(onnx_out)
    assert np.array_equal(a.images, o.images) and np.array_equal(a.texts, o.texts)
    # Without --onnx the cached export is found again, not re-exported.
    third = tmp / "third"
    assert main(["embed", str(model_path), str(data), "--out", str(third), "--runtime", "onnx",
                 *ARGS]) == 0  # fmt: skip
    after = {p.name: p.stat().st_mtime_ns for p in (tmp / "cache" / "clipforge" / "onnx").iterdir()}
    assert after == before
    assert np.array_equal(read_embeddings(third).images, o.images)


def test_another_models_export_is_refused(onnx_run, collection, capsys):
    tmp, _, data, _, onnx_out = onnx_run
    _, _, other, _, _, _ = collection
    cached = read_embeddings(onnx_out).info["onnx"]  # the graphs of the collection's model
    out = tmp / "mixed"
    assert main(["embed", str(other), str(data), "--out", str(out), "--runtime", "onnx",
                 "--onnx", cached, *ARGS]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "disagrees with the model" in err and len(err.strip().splitlines()) == 1
    assert main(["embed", str(other), str(data), "--out", str(tmp / "x"), "--runtime", "onnx",
                 "--onnx", str(tmp / "nothing"), *ARGS]) == 2  # fmt: skip
    assert "not an ONNX export" in capsys.readouterr().err


def test_an_export_that_tokenizes_otherwise_is_refused(onnx_run, tmp_path, capsys):
    _, model_path, data, _, onnx_out = onnx_run
    copy = tmp_path / "export"
    shutil.copytree(read_embeddings(onnx_out).info["onnx"], copy)
    info = json.loads((copy / "tokenizer_info.json").read_text())
    info["context_length"] = 16  # the model's rows are 24 long
    (copy / "tokenizer_info.json").write_text(json.dumps(info))
    out = tmp_path / "e"
    assert main(["embed", str(model_path), str(data), "--out", str(out), "--runtime", "onnx",
                 "--onnx", str(copy), *ARGS]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizes otherwise than the model" in err
    (copy / "tokenizer_info.json").unlink()  # an export from before tokenizers were written
    out = tmp_path / "e2"
    assert main(["embed", str(model_path), str(data), "--out", str(out), "--runtime", "onnx",
                 "--onnx", str(copy), *ARGS]) == 2  # fmt: skip
    assert "not an ONNX export" in capsys.readouterr().err


def test_resume_keeps_the_runtime(onnx_run, capsys):
    _, model_path, data, torch_out, _ = onnx_run
    before = json.loads((torch_out / "model.json").read_text())
    assert main(["embed", str(model_path), str(data), "--out", str(torch_out), "--resume",
                 "--runtime", "onnx", *ARGS]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "runtime 'torch', this run has 'onnx'" in err
    assert json.loads((torch_out / "model.json").read_text()) == before


def test_missing_onnxruntime_names_the_extra(tmp_path, collection, monkeypatch, capsys):
    _, model_path, _, data, _, _ = collection
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    out = tmp_path / "e"
    assert main(["embed", str(model_path), str(data), "--out", str(out), "--runtime", "onnx",
                 *ARGS]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'clipforge[onnx]'" in err
    assert not out.exists()  # refused before anything was written
    assert main(["embed", str(model_path), str(data), "--out", str(out), "--onnx", "x",
                 *ARGS]) == 2  # fmt: skip
    assert "add --runtime onnx" in capsys.readouterr().err
