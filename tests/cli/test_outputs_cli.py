"""Every writing command follows the output rule (clipforge.outputs), and says so in one line.

For each command: a non-empty folder clipforge did not write is refused, --overwrite or
not, with its files untouched; a new or empty folder is written; an earlier output of the
same command is replaced only with --overwrite, and then whole (no stale file left); an
output that is, or contains, an input is refused even with --overwrite. A command that
would write nothing fails with the reason instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.cli.main import main
from clipforge.data.shapes import ShapesWorld
from clipforge.data.writers import write_manifest, write_shards
from clipforge.outputs import MARKER
from tests.conftest import MICRO_ARGS_CLI


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A folder of the user's own files with names clipforge also writes."""
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text('{"mine": true}\n')
    (folder / "model.yaml").write_text("my: model\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    return _tree(folder)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # Progress bars may come first; the error itself is the last line, and one line.
    last = err.replace("\r", "\n").splitlines()[-1]
    assert last.startswith("clipforge: error: ") and needle in last, err
    assert err.count("clipforge: error") == 1 and "Traceback" not in err


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _rule_on_foreign_and_empty(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], after: tuple = ()
) -> None:
    """``argv FOLDER after``: refused on the user's folder, written into an empty one."""
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    for extra in ([], ["--overwrite"]):
        argv_mine = [*argv, str(mine), *after, *extra]
        _refused(argv_mine, capsys, "non-empty folder clipforge did not write")
    assert _tree(mine) == before
    (tmp_path / "empty").mkdir()
    _ok([*argv, str(tmp_path / "empty"), *after], capsys)
    assert (tmp_path / "empty" / MARKER).read_text() == f"{argv[0]}\n"


def _samples(n: int, caption: str = "a red ball") -> list:
    world = ShapesWorld(16)
    out = []
    for i in range(n):
        s = world.sample(i)
        s.texts = [f"{caption} {i}"]
        out.append(s)
    return out


# -- synth ----------------------------------------------------------------------------------


def test_synth_follows_the_output_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    synth = ["synth", "--n", "3", "--image-size", "16"]
    _rule_on_foreign_and_empty([*synth, "--out"], tmp_path, capsys)
    out = tmp_path / "o"
    _ok([*synth, "--format", "wds", "--shard-size", "1", "--out", str(out)], capsys)
    assert len(list(out.glob("*.tar"))) == 3
    before = _tree(out)
    _refused([*synth, "--out", str(out)], capsys, "already holds an earlier `clipforge synth`")
    assert _tree(out) == before
    _ok([*synth, "--format", "csv", "--out", str(out), "--overwrite"], capsys)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "images", "train.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine", "o"]  # no temp


# -- shard ----------------------------------------------------------------------------------


def test_shard_follows_the_output_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = write_manifest(_samples(10), tmp_path / "data", fmt="csv")
    shard = ["shard", str(data), "--out"]
    _rule_on_foreign_and_empty(shard, tmp_path, capsys)
    out = tmp_path / "s"
    _ok([*shard, str(out), "--shard-size", "1"], capsys)
    assert len(list(out.glob("train-*.tar"))) == 10
    _refused([*shard, str(out)], capsys, "pass --overwrite to replace it")
    _ok([*shard, str(out), "--shard-size", "4", "--overwrite"], capsys)
    # Exactly the new set: the ten old shards would have mixed in duplicate keys.
    names = sorted(p.name for p in out.iterdir())
    assert names == [MARKER, "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    # Writing into the input's folder would clobber it: refused, even with --overwrite.
    before = _tree(tmp_path / "data")
    _refused([*shard, str(tmp_path / "data"), "--overwrite"], capsys, "contains the input")
    assert _tree(tmp_path / "data") == before


def test_shard_of_nothing_usable_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "m.csv").write_text("image,caption\ngone.png,a\nalso-gone.png,b\n")
    argv = ["shard", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s")]
    _refused(argv, capsys, "all 2 samples of")
    assert not (tmp_path / "s").exists()


# -- curate ---------------------------------------------------------------------------------


def test_curate_follows_the_output_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = write_manifest(_samples(16), tmp_path / "data", fmt="jsonl")
    curate = ["curate", str(data), "--out"]
    _rule_on_foreign_and_empty(curate, tmp_path, capsys)
    out = tmp_path / "c"
    _ok([*curate, str(out)], capsys)
    curated = out / "curated.jsonl"
    assert len(curated.read_text().splitlines()) == 16
    _refused([*curate, str(out)], capsys, "already holds an earlier `clipforge curate`")
    # Curating an output into its own folder would replace the input it reads.
    before = _tree(out)
    argv = ["curate", str(curated), "--out", str(out), "--t", "1", "--overwrite"]
    _refused(argv, capsys, "contains the input")
    assert _tree(out) == before
    # Shards first, then a manifest with --overwrite: no curated-*.tar is left behind.
    write_shards(_samples(6), tmp_path / "shards", shard_size=3, image_format="png")
    argv = ["curate", str(tmp_path / "shards"), "--out", str(out), "--shard-size", "3"]
    _ok([*argv, "--overwrite"], capsys)
    assert len(list(out.glob("curated-*.tar"))) == 2 and not curated.exists()
    _ok([*curate, str(out), "--overwrite"], capsys)
    names = sorted(p.name for p in out.iterdir())
    assert names == [MARKER, "curated.jsonl", "entry_counts.json", "entry_histogram.png"]
    assert json.loads((out / "entry_counts.json").read_text())["written"] == ["curated.jsonl"]


def test_curate_that_keeps_nothing_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # Zero pairs kept is a possible outcome of the filter, but an empty data set trains
    # nothing: the command fails with the counts instead of writing it.
    data = write_manifest(_samples(4, caption="nothing listed"), tmp_path / "d", fmt="jsonl")
    argv = ["curate", str(data), "--out", str(tmp_path / "c")]
    _refused(argv, capsys, "kept 0 of 4 pairs (0 matched 0 of 70 entries); nothing written")
    assert not (tmp_path / "c").exists()


# -- convert --------------------------------------------------------------------------------


def test_convert_follows_the_output_rule(
    tmp_path: Path, micro_args: dict, capsys: pytest.CaptureFixture[str]
):
    from clipforge.models import create_model, load, save_checkpoint

    # The small preset's layout (patch stem, class token) is one OpenCLIP and HF can hold.
    micro_checkpoint = tmp_path / "m.pt"
    save_checkpoint(create_model("small", micro_args), micro_checkpoint, "clipforge")
    src = str(micro_checkpoint)
    # One file: a new path is written; an existing one only with --overwrite.
    other = tmp_path / "other.pt"
    other.write_bytes(b"an unrelated file")
    _refused(["convert", src, str(other), "--to", "clipforge"], capsys, "already exists")
    assert other.read_bytes() == b"an unrelated file"
    _ok(["convert", src, str(other), "--to", "clipforge", "--overwrite"], capsys)
    assert load(other).cfg == load(micro_checkpoint).cfg
    _refused(["convert", src, src, "--to", "clipforge", "--overwrite"], capsys, "also an input")
    # A folder: the folder rule; a Hugging Face folder replaces an OpenCLIP one whole.
    _rule_on_foreign_and_empty(["convert", src], tmp_path, capsys, after=("--to", "openclip"))
    out = tmp_path / "oc"
    _ok(["convert", src, str(out), "--to", "openclip"], capsys)
    _refused(["convert", src, str(out), "--to", "hf"], capsys, "pass --overwrite")
    printed = _ok(["convert", src, str(out), "--to", "hf", "--overwrite"], capsys)
    assert f"wrote {out / 'model.safetensors'}" in printed
    names = sorted(p.name for p in out.iterdir())
    # The weights and configs, and CLIP's BPE files, so transformers reads the tokenizer.
    assert names == [
        MARKER, "config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
        "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip


# -- eval -----------------------------------------------------------------------------------


def test_eval_checks_its_output_file_first(
    tmp_path: Path, micro_checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch
):
    model = str(micro_checkpoint)
    out = tmp_path / "res.json"
    out.write_text("my results\n")
    with monkeypatch.context() as m:
        m.setattr("clipforge.eval.suite.evaluate", _never)
        _refused(["eval", model, "--out", str(out)], capsys, "already exists; pass --overwrite")
        _refused(["eval", model, "--out", str(tmp_path)], capsys, "is a folder")
        _refused(["eval", model, "--out", model, "--overwrite"], capsys, "also an input")
    assert out.read_text() == "my results\n"
    fast = ["--per-class", "1", "--pairs", "10", "--progress", "false"]
    _ok(["eval", model, "--out", str(out), *fast, "--overwrite"], capsys)
    assert "zeroshot/top1" in json.loads(out.read_text())


def _never(*args, **kwargs):
    raise AssertionError("the evaluation ran before the output was checked")


@pytest.fixture
def small_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipforge.eval import shapes_data

    monkeypatch.setattr(shapes_data, "PER_CLASS", {"train": 2, "val": 1, "test": 1})


def test_eval_suite_follows_the_output_rule(
    tmp_path: Path, micro_checkpoint: Path, small_sets, capsys: pytest.CaptureFixture[str]
):
    ev = ["eval", str(micro_checkpoint), "--tasks", "zeroshot", "--progress", "false", "--out"]
    _rule_on_foreign_and_empty(ev, tmp_path, capsys)
    out = tmp_path / "ev"
    _ok([*ev, str(out)], capsys)
    cache = _tree(out / "cache")
    assert cache
    _refused([*ev, str(out)], capsys, "already holds an earlier `clipforge eval`")
    (out / "old-plot.png").write_bytes(b"stale")
    _ok([*ev, str(out), "--overwrite"], capsys)
    assert not (out / "old-plot.png").exists()
    assert _tree(out / "cache") == cache  # carried over: its entries are keyed by model
    assert ".tmp-" not in (out / "results.json").read_text()
    _refused([*ev, str(tmp_path), "--overwrite"], capsys, "contains the input")


def test_eval_data_no_task_accepts_fails(
    tmp_path: Path, micro_checkpoint: Path, capsys: pytest.CaptureFixture[str]
):
    write_manifest(_samples(2), tmp_path / "set", fmt="csv")  # image-caption pairs
    argv = ["eval", str(micro_checkpoint), "--tasks", "zeroshot", "--data",
            str(tmp_path / "set" / "train.csv"), "--out", str(tmp_path / "ev"),
            "--progress", "false"]  # fmt: skip
    _refused(argv, capsys, "no task ran on the given --data (zeroshot: needs")
    assert not (tmp_path / "ev").exists()


# -- train ----------------------------------------------------------------------------------


TRAIN = ["train", "--model-args", MICRO_ARGS_CLI, "--steps", "2", "--batch-size", "8",
         "--warmup", "1", "--log-every", "1", "--eval-every", "0", "--eval-per-class", "1",
         "--eval-pairs", "10", "--progress", "false", "--out"]  # fmt: skip


def test_train_follows_the_output_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)
    mine = tmp_path / "mine"
    before = _users_folder(mine)  # the tester's case: it was silently overwritten
    for extra in ([], ["--overwrite"]):
        _refused([*TRAIN, str(mine), *extra], capsys, "non-empty folder clipforge did not write")
    assert _tree(mine) == before
    run = tmp_path / "run"
    _ok([*TRAIN, str(run)], capsys)
    (run / "eval-test.json").write_text("from an earlier eval")
    (run / "checkpoints" / "old.pt").write_bytes(b"x")
    _refused(
        [*TRAIN, str(run)],
        capsys,
        f"already holds a run; pass --overwrite to replace it, --resume {run}",
    )
    _refused(
        [*TRAIN, str(run), "--resume", str(run), "--overwrite"],
        capsys,
        "cannot be used with --resume",
    )
    _ok([*TRAIN, str(run), "--overwrite"], capsys)
    assert not (run / "eval-test.json").exists() and not (run / "checkpoints" / "old.pt").exists()
    assert (run / "checkpoints" / "final.pt").is_file() and (run / MARKER).read_text() == "train\n"
    # A run folder from before folders were marked is still recognised as a run.
    (run / MARKER).unlink()
    _refused([*TRAIN, str(run)], capsys, "already holds a run")
    # Data inside the run folder would go with it.
    write_manifest(_samples(2), run / "data", fmt="csv")
    argv = [*TRAIN, str(run), "--data", str(run / "data" / "train.csv"), "--overwrite"]
    _refused(argv, capsys, "contains the input")
    assert (run / "data" / "train.csv").is_file()
