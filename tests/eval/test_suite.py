"""`clipforge eval MODEL --tasks ...` end to end on a micro model and small shapes sets."""

import json

import pytest

from clipforge.cli.main import main
from clipforge.eval import shapes_data
from clipforge.eval.report import SCHEMA, compare, is_fraction, load_results
from clipforge.eval.tasks import task_names


@pytest.fixture
def small_sets(monkeypatch):
    monkeypatch.setattr(shapes_data, "PER_CLASS", {"train": 3, "val": 2, "test": 3})
    monkeypatch.setattr(shapes_data, "SCENES", 40)
    monkeypatch.setattr(shapes_data, "COUNT_PER_N", 2)
    monkeypatch.setattr(shapes_data, "OOD_PER_CLASS", 1)


@pytest.fixture
def model_file(tmp_path, micro_args):
    from clipforge.models import create_model, save_checkpoint

    save_checkpoint(create_model("tiny", micro_args), tmp_path / "m.pt", "clipforge")
    return tmp_path / "m.pt"


def test_all_tasks_report_plots_cache_and_compare(tmp_path, model_file, small_sets, capsys):
    out = tmp_path / "ev"
    assert (
        main(["eval", str(model_file), "--tasks", "all", "--out", str(out), "--progress", "false"])
        == 0
    )
    res = load_results(out / "results.json")
    # Captioning needs a caption decoder, which a plain model lacks: skipped, with why.
    ran = [t for t in task_names() if t != "captioning"]
    assert res["schema"] == SCHEMA and list(res["tasks"]) == ran
    assert len(task_names()) == 12 and list(res["skipped"]) == ["captioning"]
    assert "caption decoder" in res["skipped"]["captioning"]
    # 120 test + 120 train + 80 val objects, 40 scenes, 18 counting, 29 OOD images; each
    # embedded once although zero-shot, calibration, OOD and the probes share images. The
    # 40 scenes once more for region retrieval, whose patch tokens are not cached.
    assert res["embedded_images"] == 120 + 120 + 80 + 40 + 18 + 29 + 40
    for t in res["tasks"].values():
        assert all(0.0 <= v <= 1.0 for k, v in t["metrics"].items() if is_fraction(k))
        for png in t["plots"].values():
            assert (out / png).read_bytes()[:4] == b"\x89PNG"
    plots = {p for t in res["tasks"].values() for p in t["plots"].values()}
    assert plots == {
        "zeroshot-confusion.png",
        "calibration-reliability.png",
        "modality-gap-pca.png",
    }
    report = (out / "report.md").read_text()
    assert "## compositional" in report and "![confusion matrix](zeroshot-confusion.png)" in report
    # Calibration's accuracy is zero-shot top-1 on the same images.
    assert (
        res["tasks"]["calibration"]["metrics"]["accuracy"]
        == res["tasks"]["zeroshot"]["metrics"]["top1"]
    )

    # A second run with other tasks re-embeds nothing.
    out2 = tmp_path / "ev2"
    argv = ["eval", str(model_file), "--tasks", "ood,zeroshot", "--out", str(out2),
            "--cache", str(out / "cache"), "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    res2 = load_results(out2)
    assert res2["embedded_images"] == 0 and list(res2["tasks"]) == ["ood", "zeroshot"]
    assert res2["tasks"]["ood"]["metrics"] == res["tasks"]["ood"]["metrics"]

    capsys.readouterr()
    assert main(["eval", "compare", str(out / "results.json"), str(out2)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("zeroshot") and "top1" in ln)
    assert line.split()[-1] == "+0.00"
    assert any(ln.startswith("knn") and ln.split()[-1] == "-" for ln in text.splitlines())


def test_compare_rows_and_deltas():
    a = {"tasks": {"z": {"metrics": {"top1": 0.5, "nll": 1.0}}}}
    b = {"tasks": {"z": {"metrics": {"top1": 0.75}}, "r": {"metrics": {"R@1": 0.1}}}}
    assert compare(a, b) == [
        ("z", "top1", 0.5, 0.75),
        ("z", "nll", 1.0, None),
        ("r", "R@1", None, 0.1),
    ]
    from clipforge.eval.report import compare_table

    lines = compare_table(a, b, "A", "B").splitlines()
    assert lines[1].split() == ["z", "top1", "50.00%", "75.00%", "+25.00"]


def test_user_data_runs_matching_tasks_and_skips_others(tmp_path, model_file, capsys):
    from PIL import Image

    for c in ("red", "blue"):
        for i in range(3):
            (tmp_path / "set" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (200, 0, 0) if c == "red" else (0, 0, 200)).save(
                tmp_path / "set" / c / f"{i}.png"
            )
    out = tmp_path / "ev"
    argv = ["eval", str(model_file), "--tasks", "zeroshot,retrieval,knn", "--data",
            str(tmp_path / "set"), "--out", str(out), "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert (
        list(res["tasks"]) == ["zeroshot", "knn"] and res["tasks"]["zeroshot"]["dataset"] == "set"
    )
    # Identical images per class: the nearest neighbour is always right.
    assert res["tasks"]["knn"]["metrics"]["knn1_top1"] == 1.0
    assert res["skipped"] == {"retrieval": "needs retrieval data"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "zeroshot,nope"], "unknown eval task 'nope'"),
        (["--data", "x"], "--data needs --tasks"),
        (["--tasks", "all", "--data", "/no/such/set"], "eval data not found: /no/such/set"),
        (["--onnx", "x"], "--onnx names an export for --runtime onnx"),
    ],
)
def test_errors_are_one_line(tmp_path, model_file, capsys, argv, message):
    assert main(["eval", str(model_file), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_compare_rejects_other_json(tmp_path, capsys):
    (tmp_path / "a.json").write_text('{"zeroshot/top1": 0.5}')
    assert main(["eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2
    assert "not a clipforge eval result" in capsys.readouterr().err


def test_trainer_eval_is_the_suite_in_memory(tmp_path, micro_args, small_sets):
    """The trainer's evaluation is the suite's default tasks, with no files written."""
    from clipforge.data.tokenizer import get_tokenizer
    from clipforge.eval.suite import DEFAULT_TASKS, evaluate, flat_metrics, run_suite
    from clipforge.models import create_model

    model = create_model("tiny", micro_args).train()
    tok = get_tokenizer(24)
    res = run_suite(model, tok, tmp_path / "suite", ",".join(DEFAULT_TASKS), progress=False)
    memory = evaluate(model, tok)
    assert model.training  # evaluate puts the model back in training mode
    assert flat_metrics(memory) == flat_metrics(res)
    assert set(memory["tasks"]) == {"zeroshot", "retrieval"}
    assert memory["tasks"]["zeroshot"]["plots"] == {}  # no folder, no plots


def test_eval_with_the_compiled_tower_embeds_as_eager(tmp_path, model_file, small_sets):
    """``clipforge eval --runtime compile`` runs the Inductor-compiled image tower (one
    padded batch here) and its cached features are eager PyTorch's within float32
    reordering (the bound of tests/models/test_compiled.py)."""
    import torch

    from tests.models.test_compiled import REORDER

    feats = {}
    for runtime in ("torch", "compile"):
        out = tmp_path / runtime
        argv = ["eval", str(model_file), "--tasks", "zeroshot", "--runtime", runtime,
                "--precision", "fp32", "--progress", "false", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        record = load_results(out / "results.json")["precision"]
        (folder,) = (out / "cache").iterdir()
        feats[runtime] = {f.name: torch.load(f) for f in folder.iterdir()}
        if runtime == "compile":
            assert folder.name.endswith("-compile")  # cached apart from eager features
            assert record["runtime"] == "compile"
            assert record["image_parity"]["min_cosine"] > 1 - REORDER
    assert feats["torch"].keys() == feats["compile"].keys()
    for name, want in feats["torch"].items():
        assert (feats["compile"][name] - want).abs().max() < REORDER, name
