"""clip+coca from the command line: two training steps, the decoder in the checkpoint,
``clipforge caption`` and the ``captioning`` eval task."""

import json
import math

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.captioning import Captioner, open_images
from clipforge.models import load
from tests.conftest import MICRO_ARGS_CLI

TRAIN = ["--model-args", MICRO_ARGS_CLI, "--steps", "2", "--batch-size", "8", "--warmup", "1",
         "--log-every", "1", "--eval-every", "0", "--eval-per-class", "1", "--eval-pairs", "16",
         "--progress", "false", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def coca_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("coca") / "run"
    assert main(["train", "--loss", "clip+coca", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("imgs") / "set"
    assert main(["synth", "--out", str(out), "--n", "3", "--format", "csv",
                 "--image-size", "16"]) == 0  # fmt: skip
    return out / "images"


def test_clip_coca_trains_two_steps_and_saves_its_decoder(coca_run):
    rows = [json.loads(x) for x in (coca_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss/coca"]) for r in steps)
    # The total is the sum of its two terms (three float32 numbers: one rounding).
    assert steps[0]["loss"] == pytest.approx(steps[0]["loss/clip"] + steps[0]["loss/coca"],
                                             rel=2 * torch.finfo(torch.float32).eps)  # fmt: skip
    model = load(coca_run)
    decoder = model.heads["decoder"]
    # What clipforge.models.load gives back is the objective's trained decoder, exactly.
    state = torch.load(coca_run / "checkpoints" / "last.pt", weights_only=True)["objective"]
    for k, v in decoder.state_dict().items():
        assert torch.equal(v, state[f"terms.1.decoder.{k}"]), k
    assert not decoder.training


def test_attentive_masking_trains(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--loss", "clip+coca", "--coca-keep", "0.5", *TRAIN,
                 "--out", str(out)]) == 0  # fmt: skip
    assert "decoder" in load(out).heads


def test_caption_prints_the_captioners_captions(coca_run, images, capsys):
    capsys.readouterr()
    assert main(["caption", str(coca_run), str(images), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model = load(coca_run)
    want = Captioner(model, get_tokenizer(model.cfg.text.context_length))(
        [im for _, im in open_images([images])]
    )
    assert [r["caption"] for r in rows] == want and len(rows) == 3
    assert main(["caption", str(coca_run), str(images), "--beam", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[1] if "\t" in ln else "" for ln in lines] == want


def test_captions_for_a_class_folder_feed_the_adapt_reader(coca_run, images, tmp_path, capsys):
    import shutil

    from clipforge.eval.datasets import image_folder

    root = tmp_path / "classes"
    files = sorted(images.iterdir())
    for i, f in enumerate(files):  # two classes: the first image, and the rest
        (root / ("a" if i == 0 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / ("a" if i == 0 else "b") / f.name)
    assert main(["caption", str(coca_run), "--captions-for", str(root)]) == 0
    data = image_folder(root)
    model = load(coca_run)
    want = Captioner(model, get_tokenizer(model.cfg.text.context_length))(
        [im for _, im in open_images([root / "a", root / "b"])]
    )
    assert data.captions == want and len(want) == len(files)
    capsys.readouterr()
    # A second run would replace the captions: only with --overwrite.
    assert main(["caption", str(coca_run), "--captions-for", str(root)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["caption", str(coca_run), "--captions-for", str(root), "--overwrite"]) == 0
    assert main(["caption", str(coca_run), str(images), "--captions-for", str(root)]) == 2


@pytest.mark.parametrize(
    "which, args, needle",
    [
        ("coca", ["IMAGES", "--beam", "0"], "--beam"),
        ("coca", ["/no/such.png"], "image not found: /no/such.png"),
        ("plain", ["IMAGES"], "no caption decoder"),
    ],
)
def test_caption_errors_are_one_line(micro_checkpoint, coca_run, images, which, args, needle,
                                     capsys):  # fmt: skip
    model = coca_run if which == "coca" else micro_checkpoint
    args = [str(images) if a == "IMAGES" else a for a in args]
    assert main(["caption", str(model), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_captioning_task_scores_fractions(coca_run, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", str(coca_run), "--tasks", "captioning", "--pairs", "6",
                 "--out", str(out), "--progress", "false"]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    metrics = res["tasks"]["captioning"]["metrics"]
    for k in ("exact_match", "binding_recall", "colour_recall", "shape_recall"):
        assert 0.0 <= metrics[k] <= 1.0
    assert "cider" in metrics and "bleu_4" in metrics  # pycocoevalcap is installed here
