"""The output rule (clipforge.outputs): what a command may write over, and how it writes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.outputs import (
    MARKER,
    OutputFolder,
    atomic_file,
    atomic_write,
    check_file,
    input_path,
    marker_command,
    remove_stale_temporaries,
)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_new_and_empty_folders_are_written_and_marked(tmp_path: Path) -> None:
    for path in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        out = OutputFolder(path, "synth")
        with out.building() as build:
            (build / "a.txt").write_text("a")
        assert _tree(path) == {MARKER: b"synth\n", "a.txt": b"a"}
        assert marker_command(path) == "synth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no temp left


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    _write(tmp_path / "mine", **{"notes.txt": "keep me", "sub/x.bin": "x"})
    before = _tree(tmp_path / "mine")
    for overwrite in (False, True):
        with pytest.raises(ClipforgeError, match="non-empty folder clipforge did not write"):
            OutputFolder(tmp_path / "mine", "shard", overwrite=overwrite)
    # Another command's output is not this command's to replace either.
    _write(tmp_path / "other", **{MARKER: "synth\n", "train.csv": "x"})
    with pytest.raises(ClipforgeError, match="holds the output of `clipforge synth`"):
        OutputFolder(tmp_path / "other", "shard", overwrite=True)
    assert _tree(tmp_path / "mine") == before


def test_own_folder_needs_overwrite_and_is_replaced_whole(tmp_path: Path) -> None:
    out_path = tmp_path / "o"
    _write(out_path, **{MARKER: "shard\n", "old-1.tar": "1", "old-2.tar": "2", "cache/k": "c"})
    with pytest.raises(ClipforgeError, match="already holds an earlier `clipforge shard` output"):
        OutputFolder(out_path, "shard")
    out = OutputFolder(out_path, "shard", overwrite=True)
    assert out.replaces
    with out.building(keep=("cache",)) as build:
        assert out.kept("cache") == out.real / "cache"  # the earlier cache, used meanwhile
        (build / "new.tar").write_text("n")
        assert (out_path / "old-1.tar").exists()  # the old output stays whole until the end
    assert _tree(out_path) == {MARKER: b"shard\n", "new.tar": b"n", "cache/k": b"c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_failed_write_leaves_the_old_output_or_none(tmp_path: Path) -> None:
    _write(tmp_path / "o", **{MARKER: "curate\n", "curated.jsonl": "old"})
    before = _tree(tmp_path / "o")
    out = OutputFolder(tmp_path / "o", "curate", overwrite=True)
    with pytest.raises(RuntimeError), out.building() as build:
        (build / "curated.jsonl").write_text("half")
        raise RuntimeError("killed")
    assert _tree(tmp_path / "o") == before
    (tmp_path / "e").mkdir()
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "e", "curate").building() as b:
        (b / "curated.jsonl").write_text("half")
        raise RuntimeError("killed")
    assert list((tmp_path / "e").iterdir()) == []  # an empty folder stays empty
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "n", "curate").building() as b:
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "o"]


def test_outputs_that_are_or_contain_an_input_are_always_refused(tmp_path: Path) -> None:
    _write(tmp_path / "d", **{MARKER: "curate\n", "curated.jsonl": "rows"})
    data = tmp_path / "d" / "curated.jsonl"
    for out in (tmp_path / "d", tmp_path):
        with pytest.raises(ClipforgeError, match="contains the input"):
            OutputFolder(out, "curate", overwrite=True, inputs=[data])
    with pytest.raises(ClipforgeError, match="is also an input"):
        check_file(data, overwrite=True, inputs=[data])
    # A shard pattern's folder counts; so does a name reached through a symlink.
    with pytest.raises(ClipforgeError, match="contains the input"):
        OutputFolder(
            tmp_path / "d", "curate", overwrite=True, inputs=[f"{tmp_path}/d/x-{{0..9}}.tar"]
        )
    os.symlink(tmp_path / "d", tmp_path / "link")
    with pytest.raises(ClipforgeError, match="contains the input"):
        OutputFolder(tmp_path / "link", "curate", overwrite=True, inputs=[data])
    assert input_path("s3://bucket/x.tar") is None
    # Writing beside an input, or into a new folder inside an input folder, is fine.
    OutputFolder(tmp_path / "d" / "sub", "curate", inputs=[tmp_path / "d"])


def test_files_need_overwrite_and_wrong_kinds_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"someone's file")
    with pytest.raises(ClipforgeError, match="x.pt already exists; pass --overwrite"):
        check_file(tmp_path / "x.pt")
    assert check_file(tmp_path / "x.pt", overwrite=True) == tmp_path / "x.pt"
    assert check_file(tmp_path / "new" / "y.json") == tmp_path / "new" / "y.json"
    with pytest.raises(ClipforgeError, match="is a folder; give a file name"):
        check_file(tmp_path, overwrite=True)
    with pytest.raises(ClipforgeError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "x.pt", "convert", overwrite=True)
    with pytest.raises(ClipforgeError, match="x.pt is a file, not a folder"):
        OutputFolder(tmp_path / "x.pt" / "sub", "convert")
    assert (tmp_path / "x.pt").read_bytes() == b"someone's file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_parent_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ClipforgeError, match="is not writable"):
        OutputFolder(tmp_path / "ro" / "out", "synth")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.json", "é\n")
    atomic_write(tmp_path / "a.json", b"bytes")
    assert (tmp_path / "a.json").read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_resumed_writer_removes_only_dead_writers_temporaries(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, alive = int(done.stdout), os.getpid()
    (tmp_path / "shards").mkdir()
    stale = tmp_path / "shards" / f".00003.npy.tmp-{dead}"
    live = tmp_path / f".progress.json.tmp-{alive}"
    keep = tmp_path / "notes.tmp-1"  # not one of atomic_file's names
    for p in (stale, live, keep):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and keep.exists()


@pytest.fixture
def sigint_as(request):
    """Run the test with SIGINT handled as ``request.param`` says, then put back the runner's.

    A runner started under nohup or in the background hands its tests SIGINT ignored, and
    Python then installs no handler of its own; a terminal gives Python's default handler.
    """
    saved = signal.signal(signal.SIGINT, request.param)
    yield request.param
    signal.signal(signal.SIGINT, saved)


@pytest.mark.parametrize("sigint_as", [signal.default_int_handler], indirect=True)
def test_ctrl_c_during_an_atomic_write_waits_for_it_and_is_raised_after(tmp_path, sigint_as):
    # A Ctrl-C in the middle of torch.save used to surface inside the zip writer, which
    # turned it into a RuntimeError (exit 1, a traceback) and dropped the new file.
    path = tmp_path / "last.pt"
    state = {"w": torch.arange(1000.0)}
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as f:
            os.kill(os.getpid(), signal.SIGINT)  # delivered while the write goes on
            torch.save(state, f)
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left
    # The handler is back: a Ctrl-C outside a write interrupts at once.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("sigint_as", [signal.SIG_IGN], indirect=True)
def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it_through_an_atomic_write(
    tmp_path, sigint_as
):
    path = tmp_path / "last.pt"
    with atomic_file(path) as f:
        os.kill(os.getpid(), signal.SIGINT)
        torch.save({"w": torch.ones(3)}, f)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_an_error_in_an_atomic_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(path, "w") as f:
            f.write("half")
            raise ValueError("boom")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
