"""`clipforge search --adapter`: a few-shot adapter re-ranks the top hits by its probability
of the query's class; the order on a hand-made case, then the command's plumbing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clipforge.adapt import Adapter
from clipforge.cli.main import main
from clipforge.eval.embed import model_fingerprint
from clipforge.index.rerank import rerank
from clipforge.index.search import Hit, IndexFolder
from clipforge.models import load


def probe(weight: np.ndarray, fingerprint: str | None = None) -> Adapter:
    """A linear probe (no bias) with the classes "wanted" and "other"."""
    info = {"classnames": ["wanted", "other"], "model": fingerprint}
    w = torch.from_numpy(np.asarray(weight, np.float32))
    return Adapter("linear_probe", {"weight": w, "bias": torch.zeros(2)}, {}, info)


def test_rerank_orders_by_the_adapters_probability_of_the_class():
    # Cosine order 0, 1, 2. Probe logits: hit 0 [0, 0], hit 1 [0, 1], hit 2 [1, 0], so
    # P(wanted) = sigmoid(0) = 0.5, sigmoid(-1) = 0.2689, sigmoid(1) = 0.7311.
    hits = [
        Hit(r, s, i, {"path": str(i)}) for r, s, i in ((1, 0.9, 10), (2, 0.8, 11), (3, 0.7, 12))
    ]
    vecs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    a = probe([[0, 0, 1], [0, 1, 0]])
    out = rerank(hits, vecs, a, cls=0)
    assert [h.id for h in out] == [12, 10, 11] and [h.rank for h in out] == [1, 2, 3]
    sig = [1 / (1 + math.exp(-z)) for z in (1, 0, -1)]
    # float32 softmax of logits in [-1, 1]: a few ulps of values near 0.5.
    assert [h.adapter_p for h in out] == pytest.approx(sig, abs=1e-6)
    assert [h.score for h in out] == [0.7, 0.9, 0.8]  # each keeps its cosine
    # The other class reverses it; equal probabilities keep the cosine order.
    assert [h.id for h in rerank(hits, vecs, a, cls=1)] == [11, 10, 12]
    assert [h.id for h in rerank(hits, vecs, probe(np.zeros((2, 3))), cls=0)] == [10, 11, 12]


def hits(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["search", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_adapter_re_ranks_the_candidates(tmp_path, collection, capsys):
    _, model_path, other, _, _, index = collection
    # "wanted" names the probe's class exactly; the candidates are the plain top 20.
    plain = hits(capsys, str(index), "wanted", "-k", "20")
    folder = IndexFolder(index)
    found, vecs = folder.search_with_vectors(np.ones((1, 32)), 96)  # every row
    by_id = {h.id: v for h, v in zip(found, vecs, strict=True)}
    # Favour the 20th hit, measured from the candidates' mean: a random model's features
    # are close to one another, and their differences are what a probe can tell apart.
    mean = np.mean([by_id[h["id"]] for h in plain], axis=0)
    d = by_id[plain[19]["id"]] - mean
    a = probe(np.stack([d, -d]) * 50 / np.linalg.norm(d), model_fingerprint(load(model_path)))
    a.save(tmp_path / "a.safetensors")
    args = ["-k", "20", "--adapter", str(tmp_path / "a.safetensors"), "--candidates", "20"]
    top = hits(capsys, str(index), "wanted", *args)
    assert {h["id"] for h in top} == {h["id"] for h in plain}  # the same 20, re-ordered
    ps = [h["adapter_p"] for h in top]
    assert ps == sorted(ps, reverse=True)
    assert top[0]["id"] == plain[19]["id"]  # the favoured hit, from last to first
    # An adapter fitted on another model is refused in one line.
    probe(np.zeros((2, 32)), model_fingerprint(load(other))).save(tmp_path / "b.safetensors")
    assert main(["search", str(index), "wanted", "--adapter", str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "fitted on another model" in err and len(err.strip().splitlines()) == 1
