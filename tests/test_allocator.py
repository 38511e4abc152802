"""clipforge.allocator: freed tensor memory stays in the process after tune_allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipforge import allocator
from clipforge.cli.main import main

# A 256 MiB tensor: far above glibc's largest dynamic mmap threshold (32 MiB), so with the
# C library's defaults it gets pages of its own and gives them back on free; far below
# clipforge's 1 GiB threshold, so once tuned it comes from the heap and stays there.
PROBE = """
import json, torch
from clipforge.allocator import tune_allocator
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
result = tune_allocator()
x = torch.ones(64 << 20)  # 256 MiB, every page touched
held = rss()
del x
print(json.dumps({"result": result, "again": tune_allocator(), "released": held - rss()}))
"""
MIB = 1 << 20


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_tuned_process_keeps_a_freed_large_block_and_the_system_setting_returns_it():
    tuned = probe({allocator.ENV: ""})
    assert tuned["result"] == tuned["again"] == "tuned"
    # Kept for the next request: at most a few pages of bookkeeping move.
    assert tuned["released"] < 16 * MIB
    system = probe({allocator.ENV: "system"})
    assert system["result"] == system["again"] == "system"
    # glibc's default maps the block apart and unmaps all 256 MiB on free.
    assert system["released"] > 200 * MIB


def test_the_command_line_tunes_the_allocator_before_it_runs(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert main(["losses"]) == 0
    expected = "tuned" if sys.platform.startswith("linux") else "unavailable"
    assert allocator._state == {"result": expected}
