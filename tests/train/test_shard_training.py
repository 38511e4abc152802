"""Training from tar shards: 2% damaged members, the skip summary, and exact resume."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import clipforge.checkpoint as ckpt
from clipforge.cli.main import main
from clipforge.data.readers import ShardDataset
from clipforge.data.sample import SampleError
from clipforge.data.shapes import ShapesWorld
from clipforge.data.stream import ShardStream
from clipforge.data.writers import write_shards
from clipforge.train import TrainConfig, train
from tests.conftest import MICRO_ARGS_CLI

DAMAGE = {"unreadable_image": 2, "unreadable_caption": 1, "truncated_shard": 1}  # 4 of 200


def _overwrite(shard: Path, member: str, fill: bytes) -> None:
    """Replace a member's data in place, keeping its size (the tar stays well formed)."""
    with tarfile.open(shard) as tf:
        info = tf.getmember(member)
    with open(shard, "r+b") as f:
        f.seek(info.offset_data)
        f.write((fill * info.size)[: info.size])


def _damaged_shards(folder: Path) -> Path:
    world = ShapesWorld(16, seed=0)
    shards = write_shards((world.sample(i) for i in range(200)), folder, shard_size=50)
    _overwrite(shards[0], "train-000000007.jpg", b"\x00garbage")
    _overwrite(shards[2], "train-000000120.jpg", b"\xff\xd8\xff")  # a JPEG header, then nonsense
    _overwrite(shards[1], "train-000000077.txt", b"\xff\xfe")  # not UTF-8
    # Cut the last shard inside the image of its last sample.
    with tarfile.open(shards[3]) as tf:
        info = tf.getmember("train-000000199.jpg")
    with open(shards[3], "r+b") as f:
        f.truncate(info.offset_data + info.size // 2)
    return folder


def _reasons(source: ShardStream, positions: int, streams: int = 2) -> Counter[str]:
    """Skip reasons at positions [0, positions) of a rank read by `streams` workers."""
    readers = [source.stream(0, w, streams) for w in range(streams)]
    found: Counter[str] = Counter()
    for pos in range(positions):
        _, _, item = next(readers[pos % streams])
        if isinstance(item, SampleError):
            found[item.reason] += 1
    return found


def test_two_percent_damaged_members_train_to_the_end_with_a_skip_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _damaged_shards(tmp_path / "data")
    # Each of the 2 streams reads 2 shards (100 items) per epoch, so positions 0..199 are
    # one epoch of the whole set: exactly the damage done above.
    source = ShardStream(ShardDataset(sorted(str(p) for p in data.glob("*.tar"))), 0, 20)
    assert _reasons(source, 200) == DAMAGE
    args = [
        "train", "--data", str(data), "--model-args", MICRO_ARGS_CLI, "--batch-size", "8",
        "--steps", "30", "--warmup", "2", "--workers", "2", "--shuffle-buffer", "20",
        "--eval-every", "0", "--ckpt-every", "100", "--log-every", "10", "--threads", "1",
        "--max-skip-rate", "0.05", "--progress", "false", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    final = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert final["step"] == 30 and final["samples"] > 240  # 240 used, plus the skipped
    expected = _reasons(source, final["samples"])
    assert final["skipped"] == dict(expected) and sum(expected.values()) >= 4
    out = capsys.readouterr().out
    total = sum(expected.values())
    assert f"skipped {total} of {final['samples']} samples" in out
    for reason, n in expected.items():
        assert any(line.split() == [reason, str(n)] for line in out.splitlines()), reason


def test_skip_rate_threshold_fails_the_run(tmp_path: Path, micro_args: dict) -> None:
    from clipforge.errors import ClipforgeError

    data = _damaged_shards(tmp_path / "data")
    cfg = TrainConfig(
        model_args=micro_args, data=str(data), batch_size=8, steps=13, eval_every=0,
        progress=False, out=str(tmp_path / "run"), max_skip_rate=0.001, shuffle_buffer=0,
    )  # fmt: skip
    # One stream reads whole shards in turn, each with one damaged sample, so the first
    # 104 positions hold at least 2 skips: far above 0.1%.
    with pytest.raises(ClipforgeError, match=r"skipped \(> --max-skip-rate 0.001\)"):
        train(cfg)


def test_interrupted_shard_run_resumes_bit_identically(
    tmp_path: Path, micro_args: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _damaged_shards(tmp_path / "data")

    def cfg(name: str) -> TrainConfig:
        return TrainConfig(
            model_args=micro_args, data=str(data), batch_size=8, steps=12, warmup=2,
            eval_every=0, ckpt_every=4, log_every=4, workers=2, shuffle_buffer=30,
            threads=1, progress=False, out=str(tmp_path / name),
        )  # fmt: skip

    ref = train(cfg("ref"))
    save = ckpt.atomic_save

    def save_then_die(state: dict, path: Path) -> None:
        save(state, path)
        if state.get("step") == 8 and path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg("cut"))
    monkeypatch.setattr(ckpt, "atomic_save", save)
    assert not (tmp_path / "cut" / "checkpoints" / "final.pt").exists()
    cut = train(TrainConfig(progress=False), resume=tmp_path / "cut")
    a = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(cut / "checkpoints" / "final.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((ref / "eval.json").read_text()) == json.loads(
        (cut / "eval.json").read_text()
    )
