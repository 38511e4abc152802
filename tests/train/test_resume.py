"""A run killed with SIGKILL and resumed reaches exactly the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

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
