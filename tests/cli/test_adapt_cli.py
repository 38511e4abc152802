"""``clipforge adapt``: fit, save, load and eval round trips; bench outputs; refusals."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest

from clipforge.adapt import METHODS
from clipforge.adapt.shapes_task import write_novel_classes
from clipforge.cli.main import main

CLASSES = [("hexagon", "red"), ("circle", "pink"), ("diamond", "grey")]
# Quick settings for the trained methods; the others take none.
FAST = {"zslp": "max_epochs=25", "tip_f": "max_epochs=3", "coop": "max_epochs=10",
        "cocoop": "max_steps=10", "clipn": "max_epochs=10", "tca": "start=0"}  # fmt: skip


@pytest.fixture
def folders(tmp_path):
    return write_novel_classes(tmp_path / "novel", 16, 8, 4, classes=CLASSES)


def test_help_lists_every_method(capsys):
    assert main(["adapt"]) == 0
    out = capsys.readouterr().out
    for m in METHODS.names():
        assert m in out


@pytest.mark.parametrize("method", METHODS.names())
def test_fit_save_load_eval_round_trip(method, micro_checkpoint, folders, tmp_path, capsys):
    from clipforge.adapt import evaluate, fit, load, make_embedder

    train, test = folders
    out = tmp_path / "a.safetensors"
    args = ["adapt", "fit", str(micro_checkpoint), "--data", str(train), "--method", method,
            "--shots", "4", "--seed", "1", "--out", str(out)]  # fmt: skip
    if method in FAST:
        args += ["--options", FAST[method]]
    assert main(args) == 0
    assert out.exists() and (tmp_path / "a.safetensors.json").exists()
    res = tmp_path / "r.json"
    assert main(["adapt", "eval", str(micro_checkpoint), "--adapter", str(out), "--data", str(test),
                 "--out", str(res)]) == 0  # fmt: skip
    got = json.loads(res.read_text())
    # The same fit in the library, not saved: the numbers equal the loaded adapter's.
    emb = make_embedder(micro_checkpoint)
    opts = dict(kv.split("=") for kv in FAST.get(method, "").split(",") if kv)
    direct = fit(method, None, train, 4, 1, embedder=emb, **{k: int(v) for k, v in opts.items()})
    assert evaluate(direct, test) == {"top1": got["top1"], "ece": got["ece"]}
    assert load(out, emb).params == direct.params == got["params"]
    # The adapter file is not replaced without --overwrite.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bench_writes_results_report_and_plot(micro_checkpoint, folders, tmp_path):
    out = tmp_path / "bench"
    root = folders[0].parent
    assert main(["adapt", "bench", str(micro_checkpoint), "--data", str(root), "--methods",
                 "zeroshot,gda,tip", "--shots", "1,4", "--seeds", "2", "--out", str(out),
                 "--options", "tip:alpha=2,beta=3"]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"zeroshot", "gda", "tip"}
    for rows in res["methods"].values():
        assert set(rows) == {"1", "4"}
        assert len(rows["4"]["seeds"]) == 2 and "ece" in rows["4"] and "fit_seconds" in rows["4"]
    assert res["methods"]["gda"]["1"]["seeds"][0]["params"]["selection"].startswith("defaults")
    # At one shot the option values are what the adapter uses.
    assert {k: res["methods"]["tip"]["1"]["seeds"][0]["params"][k] for k in ("alpha", "beta")} == {
        "alpha": 2,
        "beta": 3,
    }
    assert res["options"] == {"tip": {"alpha": 2, "beta": 3}}
    assert "| gda |" in (out / "report.md").read_text()
    assert (out / "accuracy_vs_shots.png").stat().st_size > 0
    assert (out / ".clipforge-output").read_text().strip() == "adapt bench"


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "nope"], "invalid choice"),
        (["--method", "tip", "--options", "alpha=-1"], "--alpha: must be a finite number >= 0"),
        (["--method", "tip", "--options", "gamma=1"], "unknown field(s) gamma"),
        (["--method", "tip", "--shots", "9"], "has 8 training images; --shots 9 needs 9"),
    ],
)
def test_fit_refusals_are_one_line(extra, needle, micro_checkpoint, folders, tmp_path, capsys):
    train, _ = folders
    args = ["adapt", "fit", str(micro_checkpoint), "--data", str(train),
            "--out", str(tmp_path / "a.safetensors"), *extra]  # fmt: skip
    with pytest.raises(SystemExit) if "invalid choice" in needle else nullcontext():
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert not (tmp_path / "a.safetensors").exists()


def test_eval_reports_ood_scores_of_another_folder(micro_checkpoint, folders, tmp_path, capsys):
    train, test = folders
    _, ood = write_novel_classes(tmp_path / "other", 16, 1, 4,
                                 classes=[("square", "brown"), ("triangle", "pink")])  # fmt: skip
    a = tmp_path / "n.safetensors"
    assert main(["adapt", "fit", str(micro_checkpoint), "--data", str(train), "--method", "clipn",
                 "--shots", "4", "--options", "max_epochs=10", "--out", str(a)]) == 0  # fmt: skip
    res = tmp_path / "r.json"
    assert main(["adapt", "eval", str(micro_checkpoint), "--adapter", str(a), "--data", str(test),
                 "--ood", str(ood), "--out", str(res)]) == 0  # fmt: skip
    got = json.loads(res.read_text())["ood"]
    assert set(got) == {"mcm", "clipn"}
    for m in got.values():
        assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr95"] <= 1
    assert "ood clipn: auroc" in capsys.readouterr().out
    # The same numbers from the library.
    from clipforge.adapt import evaluate_ood, load, make_embedder

    assert evaluate_ood(load(a, make_embedder(micro_checkpoint)), test, ood) == got


def test_compose_compares_comclip_with_plain_clip(micro_checkpoint, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["adapt", "compose", str(micro_checkpoint), "--scenes", "12", "--options",
                 "weight=0.5", "--out", str(out)]) == 0  # fmt: skip
    got = json.loads(out.read_text())
    assert got["options"] == {"weight": 0.5, "pad": 0.1}
    from clipforge.adapt import make_embedder
    from clipforge.adapt.comclip import ComCLIPOptions, evaluate_choice, shapes_boxes
    from clipforge.eval.compositional import shapes_hardneg
    from clipforge.eval.shapes_data import scenes

    want = evaluate_choice(make_embedder(micro_checkpoint), shapes_hardneg(16, n=12),
                           shapes_boxes(scenes(16, n=12)[0], 12), ComCLIPOptions(weight=0.5))  # fmt: skip
    assert {"clip": got["clip"], "comclip": got["comclip"]} == want
    assert "comclip" in capsys.readouterr().out
    assert main(["adapt", "compose", str(micro_checkpoint), "--data", str(out)]) == 2
    assert "--data and --boxes go together" in capsys.readouterr().err
