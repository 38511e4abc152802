"""A run with data workers, killed or interrupted: its workers go with it, and it resumes.

Each run starts in a session of its own, so its process group holds the trainer and its
workers and nothing else: the tests signal the group as a terminal's Ctrl-C does, find
the workers among the trainer's children in /proc, and kill the whole group afterwards
whatever happened, so a failing test leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import MICRO_ARGS_CLI

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

STARTUP = 120.0  # seconds for the trainer to import torch and fork its workers (shared CPUs)
# How long orphaned workers may take to go: a bound for "they go" on a loaded machine, not
# a speed claim (before the fix they stayed for good; the kernel or the watchdog ends them
# within about a second).
GONE = 60.0


def _cmd(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "clipforge", "train", "--model-args", MICRO_ARGS_CLI,
        "--batch-size", "8", "--steps", str(steps), "--warmup", "5", "--ckpt-every", "5",
        "--log-every", "5", "--eval-every", "0", "--evals", "none", "--workers", "2",
        "--threads", "1", "--progress", "false", "--out", str(out), *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children(pid: int) -> dict[int, str]:
    """The children of ``pid``: pid -> start time (told apart from a later reuse of the pid)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and int(st[1]) == pid:
            out[int(entry.name)] = st[19]
    return out


def _alive(workers: dict[int, str]) -> list[int]:
    """The workers still running (a zombie has ended; a reused pid is another process)."""
    return [
        pid
        for pid, start in workers.items()
        if (st := _stat(pid)) is not None and st[0] != "Z" and st[19] == start
    ]


def _as_in_a_terminal() -> None:
    # A command started from a terminal gets Ctrl-C's default action. One inherits an
    # ignored SIGINT from a parent started in the background (`pytest &`, nohup, some CI
    # runners): Python then leaves it ignored, the trainer never sees the Ctrl-C this test
    # sends, and the test would time out for a reason that is not the trainer's.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _run(cmd: list[str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_as_in_a_terminal,
    )  # fmt: skip
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_for_workers(proc: subprocess.Popen, run: Path) -> dict[int, str]:
    """The two workers, once the run has written a checkpoint (so it is resumable)."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        workers = _children(proc.pid)
        if len(workers) >= 2 and (run / "checkpoints" / "last.pt").exists():
            return workers
        time.sleep(0.05)
    pytest.fail(f"no checkpoint and two workers after {STARTUP:.0f} s")


def _ignores_sigint(pid: int) -> bool:
    """Whether ``pid`` ignores SIGINT, from the SigIgn mask of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


def _wait_gone(workers: dict[int, str], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := _alive(workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_sigkill_takes_the_workers_with_it(tmp_path):
    run = tmp_path / "run"
    with _run(_cmd(run, 100_000)) as proc:
        workers = _wait_for_workers(proc, run)
        os.kill(proc.pid, signal.SIGKILL)  # the trainer alone, as the OOM killer does
        proc.wait(timeout=30)
        # The kernel kills them at once (PR_SET_PDEATHSIG); the watchdog, where that is
        # not armed, within a second. Before, they stayed for good.
        assert _wait_gone(workers, GONE) == []


def test_ctrl_c_with_workers_leaves_it_to_the_trainer_and_resumes(tmp_path):
    run = tmp_path / "run"
    with _run(_cmd(run, 100_000)) as proc:
        workers = _wait_for_workers(proc, run)
        # A worker that took the group's Ctrl-C stopped serving and then hung at exit until
        # PyTorch's 5 s join timeout; workers leave SIGINT to the trainer instead.
        assert all(_ignores_sigint(pid) for pid in workers)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("no exit 30 s after Ctrl-C")
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 130 and "clipforge: error" not in err, err
        assert "interrupted" in err
        assert _wait_gone(workers, GONE) == []
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    # The interrupted run continues from its checkpoint; --steps ends it a few steps on.
    done = subprocess.run(
        [sys.executable, "-m", "clipforge", "train", "--resume", str(run),
         "--steps", str(step + 10), "--progress", "false"],
        env=_env(), capture_output=True, text=True, timeout=STARTUP,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(5, step + 11, 5))
    assert rows[-1]["final"] and (run / "checkpoints" / "final.pt").is_file()
