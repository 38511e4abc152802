import json

import pytest
import torch
from PIL import Image

from clipforge.errors import ClipforgeError
from clipforge.eval import counting
from clipforge.eval.choice import choice_accuracy
from clipforge.eval.compositional import shapes_hardneg
from clipforge.eval.datasets import hardneg_json, open_eval_data
from clipforge.eval.shapes_data import counting as counting_data
from tests.tolerance import count_mean_bound

from .helpers import fixed_context


def test_choice_accuracy_ties_are_wrong():
    scores = [torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.3])]
    m = choice_accuracy(scores, [0, 0, 0], ["a", "b", "a"])
    third = pytest.approx(1 / 3, abs=count_mean_bound(1 / 3))  # a float32 mean of hits
    assert m == {"accuracy": third, "a/accuracy": 0.5, "b/accuracy": 0.0}
    # The answer need not come first.
    assert choice_accuracy([torch.tensor([0.1, 0.2, 0.9])], [2], [])["accuracy"] == 1.0


def test_shapes_hardneg_rows_follow_scene_kinds():
    data = shapes_hardneg(32, n=60)
    assert set(data.group) <= {"attribute", "relation", "count", "shape"}
    assert {"relation", "count", "shape"} <= set(data.group)
    from clipforge.eval.shapes_data import scenes

    world, _ = scenes(32, n=60)
    for i, opts, g in zip(data.image_index, data.options, data.group, strict=True):
        kind = world.scene(i).kind
        assert opts[0] == world.sample(i).texts[0] and opts[1] != opts[0]
        if g == "relation":
            assert kind == "pair"
        if g == "count":
            assert kind == "group"
    # Deterministic: the same rows twice.
    assert shapes_hardneg(32, n=60).options == data.options


def _png(path, colour=(255, 0, 0), size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_sugarcrepe_and_aro_json(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", size=(20, 10))
    sugar = {
        "0": {"filename": "a.png", "caption": "a red cat", "negative_caption": "a blue cat"},
        "1": {
            "filename": "b.png",
            "caption": "a dog on a mat",
            "negative_caption": "a mat on a dog",
        },
    }
    aro = [
        {"image_path": "b.png", "bbox_x": 2, "bbox_y": 1, "bbox_w": 6, "bbox_h": 4,
         "true_caption": "the cup is on the table", "false_caption": "the table is on the cup"},
    ]  # fmt: skip
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "replace_att.json").write_text(json.dumps(sugar))
    (tmp_path / "bench" / "vg_relation.json").write_text(json.dumps(aro))
    kind, data = open_eval_data(tmp_path / "bench", image_root=str(tmp_path / "img"))
    assert kind == "choice"
    assert data.group == ["replace_att", "replace_att", "vg_relation"]
    assert data.options[1] == ["a dog on a mat", "a mat on a dog"] and data.answer == [0, 0, 0]
    # b.png whole and b.png cropped to its box are different images.
    assert data.image_index == [0, 1, 2] and len(data.images) == 3
    assert data.images.load(2).size == (6, 4) and data.images.load(1).size == (20, 10)


def test_hardneg_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"0": {"filename": "a.png", "caption": "c"}}')
    with pytest.raises(ClipforgeError, match=r"x.json: entry 0 needs"):
        hardneg_json([bad])
    bad.write_text('{"0": \n oops}')
    with pytest.raises(ClipforgeError, match=r"x.json:2: invalid JSON"):
        hardneg_json([bad])
    (tmp_path / "y.json").write_text(json.dumps({"0": {"filename": "gone.png", "caption": "a",
                                                       "negative_caption": "b"}}))  # fmt: skip
    data = hardneg_json([tmp_path / "y.json"])
    with pytest.raises(ClipforgeError, match="gone.png"):
        data.images.load(0)


def test_counting_data_and_metrics(tmp_path):
    data = counting_data(32, per_n=2)
    assert len(data.answer) == 18 and all(len(o) == 9 for o in data.options)
    for opts, a, g in zip(data.options, data.answer, data.group, strict=True):
        assert opts[a].split()[0] == ["two", "three", "four", "five", "six", "seven", "eight",
                                      "nine", "ten"][int(g) - 2]  # fmt: skip
    # A model that always answers "four": right on the fours, |n - 4| wrong elsewhere.
    texts = {t: torch.tensor([1.0, 0.0]) if t.startswith("four") else torch.tensor([0.0, 1.0])
             for opts in data.options for t in opts}  # fmt: skip
    img = torch.tensor([[1.0, 0.0]]).repeat(18, 1)
    res = counting.run(fixed_context(tmp_path, {data.images.key: img}, texts), data)
    # float32 means of hits and of integer errors: exact sums over 18, rounded.
    assert res.metrics["accuracy"] == pytest.approx(1 / 9, abs=count_mean_bound(1 / 9))
    mae = sum(abs(n - 4) for n in range(2, 11)) / 9
    assert res.metrics["mean_abs_error"] == pytest.approx(mae, abs=count_mean_bound(mae))
    assert res.details["accuracy per count"]["4"] == 1.0


def test_count_scenes_hold_n_objects():
    from clipforge.data.shapes import ShapesWorld

    w = ShapesWorld(32, "test")
    for n in (2, 10):
        sc = w.count_scene(3, n, "star", "red")
        assert len(sc.objects) == n
        boxes = [o.box for o in sc.objects]
        assert all(0 <= b[0] and b[2] <= 32 for b in boxes)
    with pytest.raises(ClipforgeError, match="1 to 10"):
        w.count_scene(0, 11, "star", "red")
