"""`clipforge link`: pooled vectors, neighbours, threshold clusters and pairwise scores on
hand-made cases; the command on a shapes-world duplicates set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clipforge.cli.main import main
from clipforge.data.shapes import ShapesWorld
from clipforge.data.shapes.duplicates import duplicate
from clipforge.index import link
from clipforge.index.store import Embeddings, read_embeddings
from tests.index.conftest import micro_model

# Every number below is a sum of a few products of exactly representable float32 values,
# rounded once or twice: 1e-6 covers a few float32 ulps of values near 1.
TOL = 1e-6


def unit_angles(*deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_pair_scores_count_pairs_through_the_contingency_table():
    # Clusters {0,1} {2,3,4}; groups {0,1,2} {3,4}. Linked pairs 1 + 3, true pairs 3 + 1,
    # correct: (0,1) and (3,4). P = R = F1 = 2/4.
    s = link.pair_scores(np.array([0, 0, 1, 1, 1]), np.array(["a", "a", "a", "b", "b"]))
    assert (s.linked_pairs, s.true_pairs, s.correct_pairs) == (4, 4, 2)
    assert (s.precision, s.recall, s.f1) == (0.5, 0.5, 0.5)
    # All singletons: nothing linked (precision 1 by convention), nothing found.
    s = link.pair_scores(np.arange(5), np.array(["a", "a", "a", "b", "b"]))
    assert (s.precision, s.recall, s.f1) == (1.0, 0.0, 0.0)
    # One cluster: every true pair found, 4 of its 10 pairs right.
    s = link.pair_scores(np.zeros(5), np.array(["a", "a", "a", "b", "b"]))
    assert (s.precision, s.recall) == (0.4, 1.0)
    assert s.f1 == pytest.approx(2 * 0.4 / 1.4, abs=1e-12)


def test_neighbours_are_the_nearest_other_rows_best_first():
    x = unit_angles(0, 10, 30, 90)
    ids, sims = link.neighbours(x, k=2, block=3)  # block 3: the second block is 1 row
    assert ids.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert sims[0] == pytest.approx(
        [math.cos(math.radians(10)), math.cos(math.radians(30))], abs=TOL
    )
    assert sims[3] == pytest.approx(
        [math.cos(math.radians(60)), math.cos(math.radians(80))], abs=TOL
    )


def test_clusters_are_connected_components_at_the_threshold():
    # 0-10-20 degrees: neighbours 10 degrees apart (cos 0.985) chain into one cluster at
    # 0.98 though the ends are 20 degrees apart (cos 0.940): single linkage.
    x = unit_angles(0, 10, 20, 90, 95, 180)
    ids, sims = link.neighbours(x, k=5)
    assert link.clusters(ids, sims, 0.98).tolist() == [0, 0, 0, 3, 3, 5]
    # cos 5 deg = 0.9962 joins only 90/95; a threshold above 1 joins nothing.
    assert link.clusters(ids, sims, 0.99).tolist() == [0, 1, 2, 3, 3, 5]
    assert link.clusters(ids, sims, 1.01).tolist() == list(range(6))
    assert link.clusters(ids, sims, -1.0).tolist() == [0] * 6


def test_pooled_vector_is_the_normalised_mean_of_unit_image_and_text():
    img = np.array([[2.0, 0.0], [0.0, 3.0]], np.float32)  # norms 2, 3: normalised first
    txt = np.array([[0.0, 0.5], [0.0, 0.0]], np.float32)  # row 1 has no caption
    emb = Embeddings({"kind": "image"}, img, txt, [{}, {}])
    h = 1 / math.sqrt(2)
    assert link.vectors(emb, "both") == pytest.approx(np.array([[h, h], [0.0, 1.0]]), abs=TOL)
    assert link.vectors(emb, "image") == pytest.approx(np.array([[1.0, 0.0], [0.0, 1.0]]), abs=TOL)
    assert link.vectors(emb, "text")[0] == pytest.approx([0.0, 1.0], abs=TOL)


def test_pooled_links_records_that_each_modality_alone_confuses():
    # Groups A = rows 0,1 and B = rows 2,3, each pair at cosine 0.45 in both modalities.
    # Across groups, 0-2 and 1-3 look alike in the image (0.6; a crop that loses what
    # tells them apart), 0-3 and 1-2 in the caption (0.6; a caption that says too little),
    # and each is at 0.1 in the other modality. Either modality alone then joins a cross
    # pair before its own pairs; pooled, a cross pair is at (0.6 + 0.1) / 2 = 0.35 and a
    # group's pair at 0.45 (image and text live in orthogonal planes here, so the pooled
    # cosine is the mean of the two). The Gram matrix's smallest eigenvalue is
    # 1 - 0.45 - 0.6 + 0.1 = 0.05 > 0: such vectors exist.
    def vecs(close: tuple[tuple[int, int], ...]) -> np.ndarray:
        g = np.full((4, 4), 0.1) + 0.9 * np.eye(4)
        g[0, 1] = g[1, 0] = g[2, 3] = g[3, 2] = 0.45
        for i, j in close:
            g[i, j] = g[j, i] = 0.6
        return np.linalg.cholesky(g).astype(np.float32)  # rows with Gram matrix g

    z = np.zeros((4, 4), np.float32)
    img = np.concatenate([vecs(((0, 2), (1, 3))), z], 1)
    txt = np.concatenate([z, vecs(((0, 3), (1, 2)))], 1)
    emb = Embeddings({"kind": "image"}, img, txt, [{}] * 4)
    truth = np.array(["A", "A", "B", "B"])

    def best_f1(mode: str) -> float:
        ids, sims = link.neighbours(link.vectors(emb, mode), k=3)
        return max(link.pair_scores(link.clusters(ids, sims, float(t)), truth).f1
                   for t in np.unique(sims))  # fmt: skip

    assert best_f1("both") == 1.0
    # Alone, the best is a cross pair alone (F1 0) or everything in one cluster: linked
    # pairs 6 with both true pairs, P = 1/3, R = 1, F1 = 0.5.
    assert best_f1("image") == pytest.approx(0.5, abs=1e-12)
    assert best_f1("text") == pytest.approx(0.5, abs=1e-12)


def test_halves_keep_groups_whole_and_tune_reports_the_other_half():
    truth = np.array(["g0", "g0", "g1", "g1", "g2", "g2", "g3", "g3"])
    val, test = link.halves(truth)
    assert val.tolist() == [0, 1, 4, 5] and test.tolist() == [2, 3, 6, 7]
    # Each group's two rows 5 degrees apart; within a half, groups are 85 degrees apart:
    # every threshold in (cos 85, cos 5] separates them, and tune() takes the middle of
    # those on its grid of 200 steps between the validation half's neighbour cosines
    # (cos 95, between 0 and 95 degrees, to cos 5): within one step of the middle.
    x = unit_angles(0, 5, 45, 50, 90, 95, 135, 140)
    r = link.tune(x, truth, k=3)
    lo, hi = math.cos(math.radians(85)), math.cos(math.radians(5))
    assert lo < r["threshold"] <= hi + TOL
    step = (hi - math.cos(math.radians(95))) / link.GRID
    assert r["threshold"] == pytest.approx((lo + hi) / 2, abs=step + TOL)
    assert r["test"]["f1"] == 1.0 and r["validation_f1"] == 1.0


def test_duplicates_share_the_scene_not_the_pixels_or_caption():
    world = ShapesWorld(32, seed=0)
    a, b = duplicate(world, 3, 0), duplicate(world, 3, 1)
    assert a.meta["group"] == b.meta["group"] == "train-000000003"
    assert a.meta["objects"] == b.meta["objects"] == world.scene(3).meta()["objects"]
    assert a.texts != b.texts  # distinct caption templates
    assert np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean() > 1
    assert duplicate(world, 3, 1).image.tobytes() == b.image.tobytes()  # seeded


def test_link_command_tunes_on_one_half_and_writes_clusters(tmp_path, capsys):
    model = micro_model(tmp_path / "micro.pt", 0)
    data, emb, out = tmp_path / "dup", tmp_path / "emb", tmp_path / "clusters.jsonl"
    assert main(["synth", "--out", str(data), "--n", "12", "--copies", "3",
                 "--image-size", "16"]) == 0  # fmt: skip
    args = ["--progress", "false", "--threads", "1"]
    assert main(["embed", str(model), str(data), "--out", str(emb), *args]) == 0
    capsys.readouterr()
    assert main(["link", str(emb), "--truth", "group", "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["validation_rows"], summary["test_rows"]) == (36, 18, 18)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 36 and {"cluster", "group", "path"} <= set(rows[0])
    # The written clusters are the command's own at the chosen threshold.
    x = link.vectors(read_embeddings(emb), "both")
    labels, _, _ = link.link(x, summary["threshold"], 10)
    assert [r["cluster"] for r in rows] == labels.tolist()
    # A threshold of -1 links every row to its 10 neighbours: one cluster, recall 1.
    assert main(["link", str(emb), "--threshold", "-1", "--truth", "group", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["clusters"] == 1 and s["all"]["recall"] == 1.0
    assert s["all"]["precision"] == pytest.approx(12 * 3 / (36 * 35 / 2), abs=1e-4)
    # Refusals: one line, exit 2.
    assert main(["link", str(emb)]) == 2
    assert main(["link", str(emb), "--threshold", "2"]) == 2
    assert main(["link", str(emb), "--threshold", "0.5", "--truth", "nope"]) == 2
    assert main(["link", str(emb), "--threshold", "0.5", "--out", str(out)]) == 2  # exists
    err = capsys.readouterr().err
    assert "--truth" in err and "--threshold" in err and "already exists" in err
