import json
import pickle
import subprocess
import sys
import warnings

import pytest
import torch

from clipforge.cli.main import main
from tests.conftest import MICRO_ARGS_CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipforge", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--loss", "nope"], "unknown loss 'nope'"),
        (["train", "--model", "huge"], "unknown model preset 'huge'"),
        (["train", "--data", "/no/such/file.csv"], "not found"),
        (["train", "--model-args", "vision.image_size=30"], "not divisible by patch size"),
        (["train", "--steps", "lots"], "--steps: must be an integer >= 1, got 'lots'"),
        (["eval", "/no/such/run"], "/no/such/run"),
        (
            ["train", "--model-args", "vision.heads=0"],
            "model arg vision.heads: must be an integer >= 1",
        ),
    ],
)
def test_errors_are_one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(pickle.dumps({"a": 1})),  # a plain pickle (protocol 4+)
        lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=0)),
        lambda p: torch.save([1, 2], p),  # torch.save of something that is not a model
    ],
)
def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys, make):
    bad = tmp_path / "x.pkl"
    make(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["eval", str(bad)]) == 2
    assert [str(w.message) for w in caught] == []  # torch's pickle-protocol warnings
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad} is not a checkpoint clipforge reads" in err


def test_malformed_yaml_and_csv(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("steps: [1,\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "c.yaml:" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text('image,caption\na.png,"fine"\nb.png,x,extra\n')
    assert main(["train", "--data", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "m.csv:3" in err and len(err.strip().splitlines()) == 1


def test_help_lists_config_fields():
    out = run_cli("train", "--help").stdout
    for flag in ("--model", "--loss", "--batch-size", "--steps", "--out", "--resume", "--lr"):
        assert flag in out


def test_models_and_losses_listing(capsys):
    assert main(["models"]) == 0
    assert "ViT-B-32" in capsys.readouterr().out.split()
    assert main(["losses"]) == 0
    assert {"clip", "siglip"} <= set(capsys.readouterr().out.split())


def test_train_then_eval_and_synth_round_trip(tmp_path):
    run = tmp_path / "run"
    res = run_cli(
        "train", "--model-args", MICRO_ARGS_CLI, "--steps", "4", "--batch-size", "8",
        "--eval-per-class", "1", "--eval-pairs", "20", "--progress", "false", "--out", str(run),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "zeroshot/top1" in res.stdout
    res = run_cli("eval", str(run), "--per-class", "1", "--pairs", "20")
    assert res.returncode == 0, res.stderr
    out = json.loads((run / "eval-test.json").read_text())
    assert "retrieval/i2t_R@1" in out and "zeroshot/top5" in out

    for fmt, check in (("csv", "train.csv"), ("jsonl", "train.jsonl")):
        res = run_cli("synth", "--out", str(tmp_path / fmt), "--n", "12", "--format", fmt)
        assert res.returncode == 0, res.stderr
        assert len((tmp_path / fmt / check).read_text().strip().splitlines()) == 12 + (fmt == "csv")
    res = run_cli("synth", "--out", str(tmp_path / "wds"), "--n", "12", "--format", "wds",
                  "--shard-size", "5")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "wds").glob("train-*.tar"))) == 3


def test_eval_reads_peer_weights(tmp_path, micro_args):
    from clipforge.models import create_model, save_checkpoint

    model = create_model("tiny", {**micro_args, "vision.stem": "patch"})
    # A folder with open_clip_config.json: the file records the heads, a bare state dict
    # could not (it would be read with OpenAI's 64-wide heads).
    save_checkpoint(model, tmp_path / "oc", "openclip")
    assert main(["eval", str(tmp_path / "oc"), "--per-class", "1", "--pairs", "10"]) == 0
    out = json.loads((tmp_path / "oc" / "eval-test.json").read_text())
    assert 0 <= out["zeroshot/top1"] <= 1 and "retrieval/t2i_R@10" in out


@pytest.mark.parametrize(
    "args, line",
    [
        (["train", "--lr", "nan"], "--lr: must be a positive finite number, got nan"),
        (["train", "--log-every", "0"], "--log-every: must be an integer >= 1, got 0"),
        (["train", "--threads", "0"], "--threads: must be an integer >= 1, got 0"),
        (["eval", "runs/x", "--per-class", "0"], "--per-class: must be an integer >= 1, got 0"),
    ],
)
def test_numbers_out_of_range_stop_before_any_work(args, line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # train without --out would create runs/DATE here
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"clipforge: error: {line}"
    assert list(tmp_path.iterdir()) == []


def test_yaml_numbers_meet_the_same_ranges(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: .nan\n")
    res = run_cli("train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert res.stderr.strip() == "clipforge: error: --lr: must be a positive finite number, got nan"
    assert not (tmp_path / "run").exists()
