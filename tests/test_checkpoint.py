import random

import numpy as np
import pytest
import torch

from clipforge import checkpoint as ckpt
from clipforge.errors import ClipforgeError
from clipforge.train.checkpoint import rng_state, set_rng_state


def test_atomic_save_keeps_old_file_when_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1}, path)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        ckpt.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1


def test_rng_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    ckpt.atomic_save({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(ckpt.load(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_load_refuses_missing_and_garbage(tmp_path):
    with pytest.raises(ClipforgeError, match="checkpoint not found"):
        ckpt.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipforgeError, match="bad.pt is not a checkpoint clipforge reads"):
        ckpt.load(bad)


def test_resolve_finds_a_run_folders_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ClipforgeError, match="--teacher: no checkpoint in"):
        ckpt.resolve(run, "--teacher")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert ckpt.resolve(run) == run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "final.pt").write_bytes(b"x")
    assert ckpt.resolve(run) == run / "checkpoints" / "final.pt"
    peer = tmp_path / "hf"
    peer.mkdir()
    assert ckpt.resolve(peer) == peer  # a peer's weights folder passes through
    with pytest.raises(ClipforgeError, match="--init not found"):
        ckpt.resolve(tmp_path / "nope", "--init")
