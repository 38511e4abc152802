"""clip+region from the command line: two training steps and the region_retrieval task."""

import json
import math

import pytest

from clipforge.cli.main import main
from tests.conftest import MICRO_ARGS_CLI

TRAIN = ["--model-args", MICRO_ARGS_CLI, "--steps", "2", "--batch-size", "8", "--warmup", "1",
         "--log-every", "1", "--eval-every", "0", "--eval-per-class", "1", "--eval-pairs", "16",
         "--progress", "false", "--threads", "1"]  # fmt: skip


def test_clip_region_with_tic_trains_two_steps_and_is_evaluated(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--loss", "clip+region", "--region-tic", "0.1", *TRAIN,
                 "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss/region"]) for r in steps)
    # Every sample of a full batch has 1-4 objects, most inside the crop.
    assert all(1 <= r["region/regions"] <= 8 * 4 for r in steps) and "region/tic" in steps[0]
    ev = tmp_path / "ev"
    assert main(["eval", str(out), "--tasks", "region_retrieval", "--pairs", "12",
                 "--out", str(ev), "--progress", "false"]) == 0  # fmt: skip
    m = json.loads((ev / "results.json").read_text())["tasks"]["region_retrieval"]["metrics"]
    for k in ("box_to_phrase_R@1", "phrase_to_box_R@1"):
        assert 0.0 <= m[k] <= 1.0
    assert 0.0 < m["phrase_to_box_chance"] <= 0.5  # two or more boxes per grounding scene


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--loss", "clip+region", "--model-args", "vision.pool=grid"], "grid pooling"),
        (["--loss", "clip+region", "--patch-dropout", "0.5"], "--patch-dropout"),
        (["--loss", "clip+coca", "--model-args", "vision.pool=grid"], "grid pooling"),
        (["--loss", "clip+coca", "--coca-keep", "0"], "--coca-keep"),
        (["--loss", "clip+proto", "--proto-k", "64", "--proto-bank", "32"], "--proto-bank 32"),
    ],
)
def test_region_coca_and_proto_errors_are_one_line(tmp_path, args, needle, capsys):
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_clip_proto_trains_two_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--loss", "clip+proto", "--proto-k", "4", "--proto-bank", "8",
                 "--proto-every", "1", *TRAIN, "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    # No prototypes before the first refresh (after step 1): the term is zero, then not.
    assert steps[0]["loss/proto"] == 0.0 and steps[1]["loss/proto"] > 0.0
