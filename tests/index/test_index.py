"""`clipforge index`: the planner's choice and measurements, the report, --add."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipforge.cli.main import main
from clipforge.errors import ClipforgeError
from clipforge.index.planner import RECALL_GOAL, candidates, parse_memory, plan
from clipforge.index.search import IndexFolder


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: a collection with the structure IVF relies on."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_small_collections_get_exact_search():
    assert [c.factory for c in candidates(5000, 512, 2**31)] == ["Flat"]


def test_growing_collections_get_graph_and_inverted_lists_and_pq_past_the_budget():
    n, d = 1_000_000, 512
    kinds = [c.kind for c in candidates(n, d, 2**32)]
    assert kinds == ["flat", "hnsw", "ivf-flat"]  # full vectors fit 4 GiB
    small = candidates(n, d, 2**29)  # 512 MiB: no full-vector index fits
    assert small[-1].factory == "OPQ64,IVF4096,PQ64" and small[-1].memory_bytes < 2**29


def test_plan_measures_every_candidate_and_the_choice_meets_the_goal():
    x = clustered(3000, 32)
    (index, ids), report = plan(x, 2**30, 50.0, exact_below=1000, held_out=100)
    by = {c["kind"]: c for c in report["candidates"]}
    assert set(by) == {"flat", "hnsw", "ivf-flat"}
    assert by["flat"]["recall_at_10"] == 1.0  # exact search is its own ground truth
    for c in by.values():
        assert c["p50_ms"] <= c["p99_ms"] and c["build_s"] >= 0 and c["tried"]
    chosen = next(c for c in report["candidates"] if c["factory"] == report["chosen"])
    assert chosen["recall_at_10"] >= RECALL_GOAL and chosen["p99_ms"] <= 50.0
    # The index holds the whole collection (held-out queries added back), ids map it back.
    assert index.ntotal == 3000 and sorted(ids.tolist()) == list(range(3000))
    _, found = index.search(x[:20], 1)
    assert (ids[found[:, 0]] == np.arange(20)).mean() >= RECALL_GOAL  # a vector finds itself


def test_a_budget_no_index_fits_is_one_line():
    with pytest.raises(ClipforgeError, match="--memory: no index fits"):
        plan(clustered(300, 32), 1000, 10.0)


@pytest.mark.parametrize(
    "text, value",
    [("2GB", 2 * 2**30), ("512mb", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), ("4096", 4096)],
)
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "nanGB"])
def test_parse_memory_refuses(text):
    with pytest.raises(ClipforgeError, match="--memory"):
        parse_memory(text)


def test_index_writes_report_and_is_tagged_with_the_model(collection, capsys):
    _, _, _, _, emb_dir, index_dir = collection
    report = json.loads((index_dir / "report.json").read_text())
    assert set(report) == {"images", "captions"}
    assert report["images"]["chosen"] == "Flat" and report["images"]["vectors"] == 96
    info = json.loads((index_dir / "model.json").read_text())
    assert info["fingerprint"] == json.loads((emb_dir / "model.json").read_text())["fingerprint"]


def test_add_appends_rows_without_a_rebuild(tmp_path, collection, capsys):
    root, model_path, other, data, emb_dir, index_dir = collection
    idx = tmp_path / "idx"
    assert main(["index", str(emb_dir), "--out", str(idx)]) == 0
    assert main(["index", "--out", str(idx), "--add", str(emb_dir)]) == 0
    assert "added 96 rows" in capsys.readouterr().out
    folder = IndexFolder(idx)
    assert len(folder.rows) == 192 and folder.indexes["images"][0].ntotal == 192
    # Each stored vector is now there twice: its two copies are the two best hits, 96 apart
    # (a random model's features are close together, so which row wins a near-tie is
    # not fixed; the copy pair is).
    vec = folder.indexes["images"][0].reconstruct(0)
    a, b = folder.search(vec[None], 2)[0]
    assert abs(a.id - b.id) == 96 and a.row == b.row
    assert a.score == pytest.approx(b.score, abs=1e-6)  # float32 dot products of one vector


def test_add_of_another_models_embeddings_is_refused(tmp_path, collection, capsys):
    _, _, other, data, emb_dir, index_dir = collection
    emb2 = tmp_path / "emb2"
    assert main(["embed", str(other), str(data), "--out", str(emb2), "--progress", "false"]) == 0
    before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
    assert main(["index", "--out", str(index_dir), "--add", str(emb2)]) == 2
    err = capsys.readouterr().err
    assert "--add: those embeddings are of model" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before


def test_index_of_an_unfinished_or_missing_embedding_folder_is_one_line(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nope"), "--out", str(tmp_path / "i")]) == 2
    assert "no such embedding folder" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text('{"complete": false}')
    assert main(["index", str(tmp_path / "half"), "--out", str(tmp_path / "i")]) == 2
    assert "unfinished embedding run" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()
