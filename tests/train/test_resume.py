"""Resume: a run killed with SIGKILL and resumed reaches exactly the weights of an
uninterrupted run; a resume says what it does with the flags it is given."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clipforge.cli.main import main
from tests.conftest import MICRO_ARGS_CLI

STEPS = 150


def _cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "clipforge", "train",
        "--model-args", MICRO_ARGS_CLI,
        "--batch-size", "8", "--steps", str(STEPS), "--warmup", "5",
        "--ckpt-every", "7", "--log-every", "5", "--eval-every", "60",
        "--eval-per-class", "1", "--eval-pairs", "40",
        "--progress", "false", "--out", str(out), *extra,
    ]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def _metrics(run: Path) -> list[dict]:
    drop = {"samples_per_s"}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_kill_and_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref), check=True, env=_env(), capture_output=True, timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    # Kill mid-run, at a step that is not a checkpoint step, after some checkpoint exists.
    while time.time() < deadline:
        rows = (run / "metrics.jsonl").read_text().splitlines() if last.exists() else []
        if rows and json.loads(rows[-1]).get("step", 0) >= 20:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "checkpoints" / "final.pt").exists()

    res = subprocess.run(
        [sys.executable, "-m", "clipforge", "train", "--resume", str(run), "--progress", "false"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    a = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(ref) == _metrics(run)
    assert json.loads((ref / "eval.json").read_text()) == json.loads(
        (run / "eval.json").read_text()
    )


# In-process resumes of a short finished run: what each flag given with --resume does.
def _tiny(out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model-args", MICRO_ARGS_CLI, "--batch-size", "8", "--warmup", "8",
        "--ckpt-every", "2", "--log-every", "2", "--eval-every", "0", "--eval-per-class", "1",
        "--eval-pairs", "20", "--threads", "1", "--progress", "false", "--out", str(out), *extra,
    ]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A complete 4-step run (all steps in the 8-step warm-up)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_tiny(run, "--steps", "4")) == 0
    return run


def test_resuming_a_complete_run_writes_nothing(finished, capsys):
    before = _snapshot(finished)
    capsys.readouterr()
    assert main(["train", "--resume", str(finished), "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "already complete at step 4; nothing was written" in out
    assert "zeroshot/top1" in out  # the saved final evaluation
    # Flags equal to the saved values change nothing either.
    assert main(["train", "--resume", str(finished), "--steps", "4", "--lr", "0.002"]) == 0
    assert _snapshot(finished) == before
    rows = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("final")) for r in rows) == 1


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--steps", "6", "--lr", "5"], "--lr 5.0 (the run has 0.002)"),
        (
            ["--workers", "2", "--seed", "3"],
            "--seed 3 (the run has 0); --workers 2 (the run has 0)",
        ),
        (["--mixup-alpha", "0.1"], "--mixup-alpha 0.1 (the run has 0.5)"),
        (["--steps", "3"], "--steps 3: run"),
        (["--out", "elsewhere"], "a resumed run stays in its folder"),
    ],
)
def test_resume_refuses_what_it_cannot_honour(finished, flags, needle, capsys):
    before = _snapshot(finished)
    capsys.readouterr()
    assert main(["train", "--resume", str(finished), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert _snapshot(finished) == before


def test_resume_with_another_architecture_is_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoints" / "final.pt").unlink()
    other = tmp_path / "other"
    wider = MICRO_ARGS_CLI.replace("embed_dim=32", "embed_dim=16")
    assert main([*_tiny(other, "--steps", "2"), "--model-args", wider]) == 0
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another architecture than the run's config.yaml" in err
    assert "tensors differ, e.g." in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(run) == before


def test_steps_extend_a_finished_run(finished, tmp_path, capsys):
    """Within the warm-up the two schedules agree, so the extended run is the 6-step run."""
    ref = tmp_path / "ref"
    assert main(_tiny(ref, "--steps", "6")) == 0
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "6", "--progress", "false"]) == 0
    assert "with --steps 6 (was 4)" in capsys.readouterr().err
    a = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(ref) == _metrics(run)  # one final record, at step 6
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 6
    # The recorded total is what a later resume holds flags against.
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 0
