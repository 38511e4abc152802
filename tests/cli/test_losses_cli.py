"""The objective family from the command line and YAML."""

import json
import math

import pytest

from clipforge.cli.main import main
from clipforge.losses import LOSSES
from tests.conftest import MICRO_ARGS_CLI
from tests.tolerance import reorder_bound


def test_losses_lists_names_with_summaries(capsys):
    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in LOSSES:
        (line,) = [x for x in lines if x.split()[0] == name]
        assert len(line.split()) > 2, line  # a summary follows the name


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--loss", "clip+0.1*nosuch"], "unknown loss 'nosuch'"),
        (["--loss", "clip+0.1*"], "cannot read term"),
        (["--loss", "cwcl"], "needs --reference"),
        (["--loss", "distill"], "needs --teacher"),
        (["--loss", "distill", "--teacher", "/no/such/run"], "not found"),
        (
            ["--loss", "infoloob", "--hopfield-beta", "x"],
            "--hopfield-beta: must be a finite number >= 0, got 'x'",
        ),
        (["--loss", "symile"], "pass --data"),
        (["--loss", "symile", "--caption", "all"], "--caption all"),
        (["--loss", "infoloob", "--hopfield-beta", "8", "--hard-negatives", "count"], "blend"),
        (["--loss", "clip+cwcl", "--hard-negatives", "count"], "'cwcl' does not support"),
        (["--loss", "clip+ot", "--caption", "all"], "'ot' does not support --caption all"),
        (["--loss", "filip", "--hard-negatives", "count"], "'filip' does not support"),
        (["--loss", "clip+filip", "--model-args", "vision.pool=grid"], "grid pooling"),
        (["--loss", "alip", "--alip-teacher", "/no/such/run"], "not found"),
    ],
)
def test_objective_errors_are_one_line(tmp_path, args, needle, capsys):
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()  # a bad objective option leaves no run folder behind


def test_yaml_config_selects_a_loss_expression(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    (tmp_path / "c.yaml").write_text(
        "loss: infoloob+0.1*uniformity+0.1*alignment\nhopfield_beta: 8\n"
        "batch_size: 8\nsteps: 2\nwarmup: 1\nlog_every: 1\neval_every: 0\n"
        "eval_per_class: 1\neval_pairs: 16\nprogress: false\nthreads: 1\n"
    )
    out = tmp_path / "run"
    args = ["train", "--config", str(tmp_path / "c.yaml"), "--model-args", MICRO_ARGS_CLI]
    assert main([*args, "--out", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss/infoloob", "loss/uniformity", "loss/alignment"} <= set(row)
    # CLOOB's fixed temperature: exp of log 30 stored in float32 (its rounding u |t| is a
    # relative error of exp(t)) and exp's own rounding.
    assert row["logit_scale"] == pytest.approx(30.0, rel=reorder_bound(1, 1 + math.log(30)))


@pytest.mark.parametrize(
    "loss, flags",
    [
        ("clip+ot", ["--caption-noise", "0.3", "--ot-iters", "20"]),
        ("alip", ["--caption-noise", "0.3", "--alip-ema-decay", "0.5"]),
        ("clip+filip", []),
    ],
)
def test_new_objectives_train_two_steps(tmp_path, monkeypatch, loss, flags):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    out = tmp_path / "run"
    args = ["train", "--loss", loss, *flags, "--model-args", MICRO_ARGS_CLI, "--steps", "2",
            "--batch-size", "8", "--warmup", "1", "--log-every", "1", "--eval-every", "0",
            "--eval-per-class", "1", "--eval-pairs", "16", "--progress", "false", "--threads", "1"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
