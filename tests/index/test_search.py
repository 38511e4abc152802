"""`clipforge search`: text, image and caption queries; every bad input is one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

from clipforge.cli.main import main


def search(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["search", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_query_prints_a_ranked_table(collection, capsys):
    *_, index = collection
    code, out, _ = search(capsys, str(index), "a red circle", "-k", "4")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "score", "path", "caption"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)


def test_json_hits_carry_the_rows_metadata(collection, capsys):
    *_, emb, index = collection
    code, out, _ = search(capsys, str(index), "a red circle", "-k", "3", "--json")
    hits = json.loads(out)
    assert code == 0 and [h["rank"] for h in hits] == [1, 2, 3]
    rows = [json.loads(line) for line in (index / "rows.jsonl").read_text().splitlines()]
    for h in hits:
        assert {k: v for k, v in h.items() if k not in ("rank", "score", "id")} == rows[h["id"]]
        assert -1 <= h["score"] <= 1


def test_image_query_finds_the_image_itself_first(collection, capsys):
    *_, index = collection
    rows = [json.loads(line) for line in (index / "rows.jsonl").read_text().splitlines()]
    code, out, _ = search(capsys, str(index), "--image", rows[7]["path"], "-k", "1", "--json")
    (hit,) = json.loads(out)
    # Query and stored feature differ only by the float16 rounding of the stored copy:
    # the score is 1 within 2^-11 per entry times sqrt(dim) entries' worth, far under 1e-2.
    assert code == 0 and hit["score"] == pytest.approx(1.0, abs=1e-2)
    assert rows[hit["id"]]["path"] == rows[7]["path"] or hit["score"] >= 0.999


def test_caption_search_is_text_to_text(collection, capsys):
    *_, index = collection
    rows = [json.loads(line) for line in (index / "rows.jsonl").read_text().splitlines()]
    caption = rows[11]["caption"]
    code, out, _ = search(capsys, str(index), caption, "--captions", "-k", "1", "--json")
    (hit,) = json.loads(out)
    assert code == 0 and hit["caption"] == caption  # its own caption is the nearest text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["   "], "the query is empty"),
        (["x" * 10_000], "the query is 10000 characters long"),
        (["a red circle", "-k", "0"], "-k: must be an integer in [1, 1000], got 0"),
        (["a red circle", "-k", "-3"], "-k:"),
        (["a red circle", "-k", "1000000000"], "-k: must be an integer in [1, 1000]"),
        ([], "give a text query or --image FILE"),
        (["--image", "x.png", "--captions"], "--captions matches text"),
    ],
)
def test_bad_queries_are_one_line(collection, capsys, args, needle):
    *_, index = collection
    code, _, err = search(capsys, str(index), *args)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_bad_query_images_are_one_line(tmp_path, collection, capsys):
    *_, data, _, index = collection
    png = next((data / "images").iterdir()).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "text.png").write_text("hello")
    for name, needle in [("cut.png", "unreadable image"), ("text.png", "unreadable image"),
                         ("none.png", "missing image")]:  # fmt: skip
        code, _, err = search(capsys, str(index), "--image", str(tmp_path / name))
        assert code == 2 and needle in err and name in err, err
        assert len(err.strip().splitlines()) == 1


def test_an_index_of_another_model_is_refused(collection, capsys):
    _, _, other, _, _, index = collection
    code, _, err = search(capsys, str(index), "a red circle", "--model", str(other))
    assert code == 2 and "was built with model" in err and "query it with the model" in err


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda d: shutil.rmtree(d), "no such index folder"),
        (lambda d: (d / "images.faiss").unlink(), "images.faiss not found"),
        (lambda d: (d / "images.faiss").write_bytes(b"garbage" * 10), "images.faiss is damaged"),
        (lambda d: (d / "rows.jsonl").write_text("{oops"), "rows.jsonl is damaged"),
        (lambda d: (d / "model.json").unlink(), "model.json not found"),
        (lambda d: (d / "images.ids.npy").write_bytes(b"x"), "images.ids.npy is damaged"),
    ],
)
def test_missing_or_damaged_index_files_are_one_line(tmp_path, collection, capsys, damage, needle):
    *_, index = collection
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    damage(copy)
    code, _, err = search(capsys, str(copy), "a red circle")
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_text_collection_is_searched_over_its_texts(tmp_path, collection, capsys):
    _, model, *_ = collection
    f = tmp_path / "t.txt"
    f.write_text("a red circle\na blue square\nthree green stars\n")
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    assert (
        main(["embed", str(model), "--texts", str(f), "--out", str(emb), "--progress", "false"])
        == 0
    )
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    capsys.readouterr()
    code, out, _ = search(capsys, str(idx), "a blue square", "-k", "1", "--json")
    assert code == 0 and json.loads(out)[0]["caption"] == "a blue square"
    code, _, err = search(capsys, str(idx), "--image", str(f))
    assert code == 2


def test_an_index_mixing_models_is_refused_by_search_and_serve(tmp_path, collection, capsys):
    _, _, other, _, _, index = collection
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    info = json.loads((copy / "model.json").read_text())
    assert info["parts"] == [{"fingerprint": info["fingerprint"], "rows": 96}]
    # As if 32 of its rows had come from another model's embeddings.
    from clipforge.eval.embed import model_fingerprint
    from clipforge.models import load

    theirs = model_fingerprint(load(other))
    info["parts"] = [{"fingerprint": info["fingerprint"], "rows": 64},
                     {"fingerprint": theirs, "rows": 32}]  # fmt: skip
    (copy / "model.json").write_text(json.dumps(info))
    code, _, err = search(capsys, str(copy), "a red circle")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "mixes embeddings of different models" in err and f"32 rows of model {theirs}" in err
    assert main(["serve", str(copy), "--port", "1"]) == 2  # refused before it listens
    assert "mixes embeddings" in capsys.readouterr().err
