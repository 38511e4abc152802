"""`clipforge embed`: shards, rows and model.json; skipped files; resume; refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli.main import main
from clipforge.data.tokenizer import get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import Embedder, model_fingerprint
from clipforge.index.embedding import embed_collection
from clipforge.index.items import open_collection
from clipforge.index.store import read_embeddings
from clipforge.models import load

ARGS = ["--progress", "false", "--threads", "1"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file of an embedding folder but the run time in model.json."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "model.json":
                info = json.loads(data)
                info.pop("seconds")
                data = json.dumps(info).encode()
            out[p.relative_to(folder).as_posix()] = data
    return out


def test_embed_writes_features_rows_and_model_record(collection):
    root, model_path, _, data, emb_dir, _ = collection
    emb = read_embeddings(emb_dir)
    model = load(model_path)
    info = emb.info
    assert info["fingerprint"] == model_fingerprint(model)
    assert (info["dim"], info["dtype"], info["items"], info["rows"]) == (32, "float16", 96, 96)
    assert info["precision"]["precision"] == "fp32"  # auto: width 32 is below every crossover
    assert info["preprocessing"]["image_size"] == 16
    assert np.load(emb_dir / "shards" / "00000.images.npy").dtype == np.float16
    # Rows: the manifest's path, caption and meta columns, in collection order.
    assert [r["item"] for r in emb.rows] == list(range(96))
    first = emb.rows[0]
    assert Path(first["path"]) == (data / "images" / "train-000000000.png").resolve()
    assert first["caption"] and first["objects"][0]["colour"]
    # The features are the one embedder's, rounded to float16: relative error 2^-11 per
    # entry of a unit vector, so at most 2^-11 absolute.
    tok = get_tokenizer(model.cfg.text.context_length)
    ref = Embedder(model, tok, progress=False).image_batch(
        [Image.open(r["path"]).convert("RGB") for r in emb.rows[:8]]
    )
    assert np.abs(emb.images[:8] - ref.numpy()).max() <= 2**-11
    texts = Embedder(model, tok, progress=False).text_batch([r["caption"] for r in emb.rows[:8]])
    assert np.abs(emb.texts[:8] - texts.numpy()).max() <= 2**-11


def test_embed_with_the_compiled_tower_writes_the_eager_features(tmp_path, collection):
    _, model_path, _, data, emb_dir, _ = collection
    out = tmp_path / "compiled"
    args = ["--runtime", "compile", "--shard-size", "32", "--batch-size", "20", *ARGS]
    assert main(["embed", str(model_path), str(data), "--out", str(out), *args]) == 0
    got, want = read_embeddings(out), read_embeddings(emb_dir)
    assert got.info["runtime"] == "compile" and got.info["precision"]["runtime"] == "compile"
    # Both are float16 roundings (2^-11 each) of features that differ by Inductor's
    # reordering (1e-4, tests/models/test_compiled.py); the texts run eagerly in both.
    assert np.abs(got.images - want.images).max() <= 2 * 2**-11 + 1e-4
    assert np.array_equal(got.texts, want.texts) and got.rows == want.rows


def test_embed_float32_folder_skips_unreadable_files_by_reason(tmp_path, collection, capsys):
    _, model_path, _, data, _, _ = collection
    folder = tmp_path / "photos"
    (folder / "sub" / "deeper").mkdir(parents=True)
    src = sorted((data / "images").iterdir())
    for i, p in enumerate(src[:5]):
        dest = folder / ("sub/deeper" if i % 2 else "") / p.name
        dest.write_bytes(p.read_bytes())
    (folder / "sub" / "notes.png").write_text("not an image")
    (folder / "cut.png").write_bytes(src[6].read_bytes()[:60])  # truncated
    out = tmp_path / "emb"
    assert (
        main(
            ["embed", str(model_path), str(folder), "--out", str(out), "--dtype", "float32", *ARGS]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "embedded 5 of 7 items" in printed and "skipped 2: unreadable_image" in printed
    emb = read_embeddings(out)
    assert emb.info["skipped"] == {"unreadable_image": 2}
    assert np.load(out / "shards" / "00000.images.npy").dtype == np.float32
    assert sorted(Path(r["path"]).name for r in emb.rows) == sorted(p.name for p in src[:5])
    assert all(r["caption"] == "" for r in emb.rows)  # no sidecars: searchable by image only
    assert np.allclose(np.linalg.norm(emb.images, axis=1), 1, atol=1e-6)


def test_embed_texts_file(tmp_path, collection):
    _, model_path, _, _, _, _ = collection
    f = tmp_path / "t.txt"
    f.write_text("a red circle\n\n  a blue square \nthree green stars\n")
    out = tmp_path / "emb"
    assert main(["embed", str(model_path), "--texts", str(f), "--out", str(out), *ARGS]) == 0
    emb = read_embeddings(out)
    assert emb.images is None and emb.info["kind"] == "text"
    assert [r["caption"] for r in emb.rows] == [
        "a red circle",
        "a blue square",
        "three green stars",
    ]
    assert [r["path"] for r in emb.rows] == [f"{f}:1", f"{f}:3", f"{f}:4"]


# Micro models in the layouts clipforge can write as OpenCLIP / Hugging Face CLIP and as
# Hugging Face SigLIP. pos_init only says how a model starts, which no file records.
CLIP_LAYOUT = {"vision.stem": "patch", "vision.pool": "cls", "vision.pos_init": "random"}
SIGLIP_LAYOUT = {
    **CLIP_LAYOUT, "vision.pool": "map", "vision.pre_norm": False, "vision.class_token": False,
    "vision.patch_bias": True, "vision.proj_type": "none", "vision.norm_eps": 1e-6,
    "text.causal": False, "text.pool": "last", "text.proj_bias": True, "text.norm_eps": 1e-6,
    "act": "gelu_tanh", "resize_mode": "squash", "logit_scale_max": None,
}  # fmt: skip


@pytest.mark.parametrize(
    "layout, bias, formats",
    [(CLIP_LAYOUT, None, ["openclip", "hf"]), (SIGLIP_LAYOUT, -10.0, ["hf"])],
)
def test_every_format_clipforge_loads_embeds_the_same(tmp_path, collection, layout, bias, formats):
    from clipforge.models import create_model, save_checkpoint
    from tests.conftest import MICRO_ARGS

    _, _, _, data, _, _ = collection
    torch.manual_seed(0)
    # SigLIP has a logit bias (which embedding does not use, but the fingerprint hashes).
    model = create_model("tiny", {**MICRO_ARGS, **layout}, init_logit_bias=bias)
    save_checkpoint(model, tmp_path / "cf.pt", "clipforge")
    args = [*ARGS, "--shard-size", "32"]
    assert (
        main(["embed", str(tmp_path / "cf.pt"), str(data), "--out", str(tmp_path / "e"), *args])
        == 0
    )
    want = read_embeddings(tmp_path / "e")
    for fmt in formats:
        save_checkpoint(model, tmp_path / fmt, fmt)  # an OpenCLIP or Hugging Face folder
        out = tmp_path / f"e-{fmt}"
        assert main(["embed", str(tmp_path / fmt), str(data), "--out", str(out), *args]) == 0
        got = read_embeddings(out)
        # The same weights and architecture read from another layout: the same model (by
        # fingerprint), so the same arithmetic, to the bit.
        assert got.fingerprint == want.fingerprint
        assert np.array_equal(got.images, want.images) and np.array_equal(got.texts, want.texts)


def test_a_siglip_folder_embeds_and_searches_with_its_sentencepiece_ids(tmp_path):
    pytest.importorskip("sentencepiece")
    from clipforge.cli.collections import load_searcher
    from clipforge.data.hf_tokenizers import SentencePieceTokenizer, TokenizerSpec
    from clipforge.models import create_model, save_checkpoint, tokenizer_for
    from tests.conftest import MICRO_ARGS
    from tests.spiece import spiece_model

    torch.manual_seed(0)
    model = create_model("tiny", {**MICRO_ARGS, **SIGLIP_LAYOUT}, init_logit_bias=-10.0)
    under_clip_bpe = model_fingerprint(model)
    model.tokenizer_spec = TokenizerSpec("sentencepiece", spiece_model())
    save_checkpoint(model, tmp_path / "cf.pt", "clipforge")  # stores the tokenizer
    save_checkpoint(model, tmp_path / "hf", "hf")  # writes spiece.model beside the weights
    assert (tmp_path / "hf" / "spiece.model").is_file()
    captions = ["A photo of a RED circle.", "two small, dotted triangles!", "a dark dog"]
    (tmp_path / "q.txt").write_text("\n".join(captions) + "\n")
    got = {}
    for name in ("cf.pt", "hf"):
        out = tmp_path / f"e-{name}"
        args = ["embed", str(tmp_path / name), "--texts", str(tmp_path / "q.txt"), "--out"]
        assert main([*args, str(out), "--dtype", "float32", *ARGS]) == 0
        got[name] = read_embeddings(out)
    # One model (weights and tokenizer) from either file, and not the same weights under
    # CLIP's BPE: embeddings of the two never mix.
    fp = model_fingerprint(model)
    assert got["cf.pt"].fingerprint == got["hf"].fingerprint == fp != under_clip_bpe
    assert np.array_equal(got["cf.pt"].texts, got["hf"].texts)
    # The stored features are those of the SentencePiece ids (the same embedder, the same
    # batch: the same arithmetic); CLIP's ids give other texts, O(1) away on unit vectors.
    tok = tokenizer_for(load(tmp_path / "hf"))
    assert isinstance(tok, SentencePieceTokenizer)
    sp = Embedder(model, tok, progress=False).text_batch(captions).numpy()
    bpe = Embedder(model, get_tokenizer(24), progress=False).text_batch(captions).numpy()
    assert np.array_equal(got["hf"].texts, sp)
    assert np.abs(got["hf"].texts - bpe).max() > 0.1
    # Queries go through the same tokenizer: search loads the model with its own.
    assert main(["index", str(tmp_path / "e-hf"), "--out", str(tmp_path / "ix")]) == 0
    searcher = load_searcher(str(tmp_path / "ix"), None, "fp32")
    assert isinstance(searcher.embedder.tokenizer, SentencePieceTokenizer)


def test_resume_after_a_crash_in_any_shard_equals_an_uninterrupted_run(tmp_path, collection):
    _, model_path, _, data, _, _ = collection
    model = load(model_path)
    tok = get_tokenizer(model.cfg.text.context_length)
    items = open_collection(str(data))
    kw = dict(model_source="m", shard_size=16, batch_size=8, progress=False)
    embed_collection(model, tok, items, tmp_path / "whole", **kw)
    want = files(tmp_path / "whole")

    class Crash(Exception):
        pass

    for at in (0, 3):
        out = tmp_path / f"crash{at}"

        def crash(n: int, at: int = at) -> None:
            if n == at:
                raise Crash

        with pytest.raises(Crash):
            embed_collection(model, tok, items, out, on_shard=crash, **kw)
        embed_collection(model, tok, items, out, resume=True, **kw)
        assert files(out) == want


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, collection):
    _, model_path, _, data, _, _ = collection
    cmd = [sys.executable, "-m", "clipforge", "embed", str(model_path), str(data),
           "--shard-size", "2", "--batch-size", "2", *ARGS]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*cmd, "--out", str(whole)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(cut)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((cut / "progress.json").read_text())["shards"] >= 5:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((cut / "model.json").read_text())["complete"]
    with pytest.raises(ClipforgeError, match="unfinished embedding run"):
        read_embeddings(cut)
    subprocess.run([*cmd, "--out", str(cut), "--resume"], check=True, env=env, capture_output=True)
    assert files(cut) == files(whole)
    assert len(read_embeddings(cut).rows) == 96


def test_embedding_into_another_models_folder_is_refused(tmp_path, collection, capsys):
    root, model_path, other, data, emb_dir, _ = collection
    before = files(emb_dir)
    assert main(["embed", str(other), str(data), "--out", str(emb_dir), *ARGS]) == 2
    err = capsys.readouterr().err
    fp = model_fingerprint(load(model_path))
    assert f"already holds embeddings of model {fp}" in err and len(err.strip().splitlines()) == 1
    assert main(["embed", str(other), str(data), "--out", str(emb_dir), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "not mixed" in err and model_fingerprint(load(other)) in err
    assert files(emb_dir) == before  # nothing on disk changed


@pytest.mark.parametrize("found", ["missing", "empty"])
def test_a_refused_embed_leaves_the_folder_as_it_found_it(tmp_path, collection, capsys, found):
    _, model_path, _, _, _, _ = collection
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.jpg", "b.png"):
        (junk / name).write_bytes(b"\xff\xd8 not an image")
    out = tmp_path / "emb"
    if found == "empty":
        out.mkdir()
    # Refused before the folder is made (the model) and after (no image readable).
    for model, why in ((tmp_path / "bad.pt", "not a checkpoint"), (model_path, "no image")):
        assert main(["embed", str(model), str(junk), "--out", str(out), *ARGS]) == 2
        assert why in capsys.readouterr().err
        if found == "missing":
            assert not out.exists()
        else:
            assert out.is_dir() and not any(out.iterdir())


def test_resume_of_a_folder_embed_did_not_write_is_refused(tmp_path, collection, capsys):
    _, model_path, _, data, _, _ = collection
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("mine")
    assert (
        main(["embed", str(model_path), str(data), "--out", str(tmp_path / "x"), "--resume"]) == 2
    )
    assert "not a `clipforge embed` folder" in capsys.readouterr().err
    assert (tmp_path / "x" / "f").read_text() == "mine"


def test_webdataset_shards_embed_like_the_manifest_they_were_made_from(tmp_path, collection):
    _, model_path, _, data, emb_dir, _ = collection
    shards, out = tmp_path / "shards", tmp_path / "emb"
    assert main(["shard", str(data), "--out", str(shards), "--shard-size", "40"]) == 0
    args = [*ARGS, "--shard-size", "32"]  # the embedding's own shards, as the fixture's
    assert main(["embed", str(model_path), str(shards), "--out", str(out), *args]) == 0
    got, want = read_embeddings(out), read_embeddings(emb_dir)
    # `clipforge shard` copies the PNG bytes: the same pixels, batches and arithmetic.
    assert np.array_equal(got.images, want.images) and np.array_equal(got.texts, want.texts)
    assert [r["caption"] for r in got.rows] == [r["caption"] for r in want.rows]
    assert [r["objects"] for r in got.rows] == [r["objects"] for r in want.rows]
    tars = sorted(shards.glob("*.tar"))
    assert len(tars) == 3 and got.rows[40]["path"].startswith(f"{tars[1]}:")


def test_a_damaged_shard_is_skipped_and_counted(tmp_path, collection, capsys):
    _, model_path, _, data, _, _ = collection
    shards, out = tmp_path / "shards", tmp_path / "emb"
    assert main(["shard", str(data), "--out", str(shards), "--shard-size", "40"]) == 0
    last = sorted(shards.glob("*.tar"))[-1]  # 16 samples
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    assert main(["embed", str(model_path), str(shards), "--out", str(out), *ARGS]) == 0
    emb = read_embeddings(out)
    assert emb.info["skipped"] == {"truncated_shard": 1}
    assert 80 <= len(emb.rows) < 96 and "skipped 1: truncated_shard" in capsys.readouterr().out


def test_shards_named_by_a_relative_path_embed_as_absolute_rows(
    tmp_path, collection, monkeypatch, capsys
):
    _, model_path, other, data, _, _ = collection
    monkeypatch.chdir(tmp_path)
    assert main(["shard", str(data), "--out", "shards", "--shard-size", "40"]) == 0
    assert main(["embed", str(model_path), "shards", "--out", "emb", *ARGS]) == 0
    before = read_embeddings(tmp_path / "emb")
    tar = tmp_path.resolve() / "shards" / "train-000001.tar"
    assert before.rows[40]["path"].startswith(f"{tar}:")
    # --update opens the collection again by its absolute path, from anywhere: the same
    # rows, so the same collection (relative rows made it look like another one).
    monkeypatch.chdir(tmp_path / "shards")
    assert main(["embed", "--update", str(tmp_path / "emb"), "--model", str(other), *ARGS]) == 0
    after = read_embeddings(tmp_path / "emb")
    assert [r["path"] for r in after.rows] == [r["path"] for r in before.rows]
    assert after.fingerprint != before.fingerprint


def test_update_re_embeds_the_same_rows_with_the_new_model(tmp_path, collection, capsys):
    _, model_path, other, data, _, _ = collection
    emb, fresh, idx = tmp_path / "emb", tmp_path / "fresh", tmp_path / "idx"
    args = [*ARGS, "--shard-size", "32"]
    assert main(["embed", str(model_path), str(data), "--out", str(emb), *args]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    before = read_embeddings(emb)
    assert main(["embed", "--update", str(emb), "--model", str(other), *ARGS]) == 0
    assert model_fingerprint(load(other)) in capsys.readouterr().out
    after = read_embeddings(emb)
    assert after.fingerprint == model_fingerprint(load(other)) != before.fingerprint
    assert [r["path"] for r in after.rows] == [r["path"] for r in before.rows]
    # The same arithmetic as embedding the collection with the new model from scratch
    # (same shards, same batches): equal to the bit.
    assert main(["embed", str(other), str(data), "--out", str(fresh), *args]) == 0
    want = read_embeddings(fresh)
    assert np.array_equal(after.images, want.images) and np.array_equal(after.texts, want.texts)
    assert after.rows == want.rows
    # The old index is of the old model: the updated embeddings are not appended to it.
    capsys.readouterr()
    assert main(["index", "--add", str(emb), "--out", str(idx)]) == 2
    assert "embeddings are of model" in capsys.readouterr().err
    # Updating to the model it already has changes nothing.
    kept = files(emb)
    assert main(["embed", "--update", str(emb), "--model", str(other), *ARGS]) == 0
    assert "nothing to do" in capsys.readouterr().out and files(emb) == kept


def test_update_refusals_are_one_line(tmp_path, collection, capsys):
    _, model_path, other, data, emb_dir, _ = collection
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("mine")
    cases = [
        (["--update", str(tmp_path / "x"), "--model", str(other)], "not a `clipforge embed`"),
        (["--update", str(emb_dir)], "needs --model NEW"),
        (["--update", str(emb_dir), "--model", str(other), "--out", "o"], "give only --model"),
        ([str(model_path), str(data), "--model", str(other)], "goes with --update"),
        (["--update", str(emb_dir), "--model", str(tmp_path / "nope.pt")], "not found"),
    ]
    before = files(emb_dir)
    for argv, message in cases:
        assert main(["embed", *argv, *ARGS]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert files(emb_dir) == before and (tmp_path / "x" / "f").read_text() == "mine"


def test_torchrun_ranks_embed_disjoint_shares_whose_union_is_the_one_process_output(
    tmp_path, collection
):
    import socket

    with socket.socket() as s:  # a port free now, for torchrun's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, model_path, _, data, emb_dir, _ = collection
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), "-m", "clipforge.embed", str(model_path),
           str(data), "--out", str(out), "--shard-size", "32", *ARGS]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[2])}  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("embedded 96 of 96 items") == 1  # rank 0 reports
    # 3 shards of 32 over 2 ranks (0 and 2 on rank 0, 1 on rank 1): the same files, byte
    # for byte, as the fixture's one-process run with the same shard size.
    got, want = files(out), files(emb_dir)
    assert sorted(got) == sorted(want)
    for name in got:
        if name != "model.json":
            assert got[name] == want[name], name
    a, b = json.loads(got["model.json"]), json.loads(want["model.json"])
    assert {k: v for k, v in a.items() if k != "source"} == {
        k: v for k, v in b.items() if k != "source"
    }
    e = read_embeddings(out)
    assert [r["item"] for r in e.rows] == list(range(96))
