import json

import pytest
import torch
from PIL import Image

from clipforge.errors import ClipforgeError
from clipforge.eval.datasets import image_folder, karpathy_json, open_eval_data


def _png(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_image_folder_with_names_and_templates(tmp_path):
    for c, n in (("b_dog", 2), ("a_cat", 1)):
        for i in range(n):
            _png(tmp_path / "set" / c / f"{i}.png")
    (tmp_path / "set" / "templates.txt").write_text("a photo of a {c}.\n\nart of {}\n")
    kind, data = open_eval_data(tmp_path / "set")
    assert kind == "classification"
    assert data.classnames == ["a cat", "b dog"] and data.labels.tolist() == [0, 1, 1]
    assert data.templates == ["a photo of a {}.", "art of {}"]
    assert data.images.load(2).size == (8, 8)
    (tmp_path / "set" / "classnames.txt").write_text("cat\n")
    with pytest.raises(ClipforgeError, match="classnames.txt: 1 names for 2 class folders"):
        image_folder(tmp_path / "set")
    (tmp_path / "set" / "classnames.txt").write_text("cat\ndog\n")
    (tmp_path / "set" / "templates.txt").write_text("no placeholder\n")
    with pytest.raises(ClipforgeError, match=r"templates.txt:1: a template needs"):
        image_folder(tmp_path / "set")


def test_manifest_with_several_captions(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    rows = [{"image": "a.png", "caption": ["one", "two"]}, {"image": "b.png", "caption": "three"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kind, data = open_eval_data(tmp_path / "r.jsonl")
    assert kind == "retrieval" and data.captions == [["one", "two"], ["three"]]
    assert data.texts == ["one", "two", "three"] and data.owner.tolist() == [0, 0, 1]
    assert data.positive_matrix().tolist() == [[True, True, False], [False, False, True]]


def test_karpathy_split(tmp_path):
    _png(tmp_path / "val2014" / "x.jpg")
    doc = {
        "images": [
            {"filepath": "val2014", "filename": "x.jpg", "split": "test",
             "sentences": [{"raw": "a man."}, {"raw": "a person. "}]},
            {"filepath": "val2014", "filename": "y.jpg", "split": "train", "sentences": [{"raw": "b"}]},
        ]
    }  # fmt: skip
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    kind, data = open_eval_data(tmp_path / "dataset_coco.json")
    assert kind == "retrieval" and data.captions == [["a man.", "a person."]]
    assert data.images.load(0).size == (8, 8)
    with pytest.raises(ClipforgeError, match="no images in split 'val'"):
        karpathy_json(tmp_path / "dataset_coco.json", split="val")


def test_unknown_and_missing(tmp_path):
    with pytest.raises(ClipforgeError, match="eval data not found"):
        open_eval_data(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ClipforgeError, match="unknown eval data format"):
        open_eval_data(tmp_path / "x.txt")
    (tmp_path / "k.json").write_text(json.dumps({"images": [{"filename": "z.jpg"}]}))
    with pytest.raises(ClipforgeError, match=r"k.json: images\[0\] needs"):
        open_eval_data(tmp_path / "k.json")


def test_labels_are_int64(tmp_path):
    _png(tmp_path / "s" / "c" / "0.png")
    assert image_folder(tmp_path / "s").labels.dtype == torch.int64


def test_image_folder_captions_from_a_jsonl_or_sidecars(tmp_path):
    for c in ("cat", "dog"):
        _png(tmp_path / c / "a.png")
    assert image_folder(tmp_path).captions is None  # no captions anywhere
    (tmp_path / "cat" / "a.png.txt").write_text("a grey cat\nsecond line\n")
    assert image_folder(tmp_path).captions is None  # one image without: none at all
    (tmp_path / "dog" / "a.png.txt").write_text("a dog\n")
    assert image_folder(tmp_path).captions == ["a grey cat", "a dog"]
    # captions.jsonl wins over sidecars, in the folder's image order.
    lines = [{"image": "dog/a.png", "caption": "d"}, {"image": "cat/a.png", "caption": "c"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert image_folder(tmp_path).captions == ["c", "d"]
    (tmp_path / "captions.jsonl").write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(ClipforgeError, match="no caption for cat/a.png"):
        image_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text("[1]\n")
    with pytest.raises(ClipforgeError, match="captions.jsonl:1: expected"):
        image_folder(tmp_path)
