"""Objectives in the trainer: expressions, meta fields in the batch, exact resume of state."""

import json

import pytest
import torch
import yaml

from clipforge.config import from_dict
from clipforge.data.batches import Collator, SampleProcessor
from clipforge.data.sample import Sample
from clipforge.data.shapes import ShapesWorld
from clipforge.data.shapes.trimodal import TriModalShapes
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop
from clipforge.data.writers import write_manifest
from clipforge.errors import ClipforgeError
from clipforge.losses.symile import SymileObjective
from clipforge.models import create_model
from clipforge.train import TrainConfig, train
from tests.tolerance import reorder_bound


def _cfg(tmp_path, micro_args, name="run", **kw) -> TrainConfig:
    base = dict(
        model_args=micro_args, batch_size=8, steps=4, warmup=2, log_every=1, eval_every=0,
        ckpt_every=2, eval_per_class=1, eval_pairs=16, progress=False, threads=1,
        out=str(tmp_path / name),
    )  # fmt: skip
    base.update(kw)
    return from_dict(TrainConfig, base)  # objective options go to their section


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_expression_logs_its_terms(tmp_path, micro_args):
    run = train(_cfg(tmp_path, micro_args, loss="clip+0.1*uniformity+0.1*alignment", steps=2))
    row = _rows(run)[0]
    assert {"loss/clip", "loss/uniformity", "loss/alignment"} <= set(row)
    terms = row["loss/clip"], 0.1 * row["loss/uniformity"], 0.1 * row["loss/alignment"]
    # The logged terms are the float32 values the sum adds up; in float32 the sum rounds the
    # two weights, their products and two additions: 6 roundings of at most sum|terms|.
    tol = reorder_bound(6, sum(abs(t) for t in terms))
    assert row["loss"] == pytest.approx(sum(terms), abs=tol)


def test_processor_and_collator_carry_meta_fields():
    world = ShapesWorld(16)
    samples = [world.sample(i) for i in range(4)]
    for i, s in enumerate(samples):
        s.meta["teacher_image"] = [float(i)] * 3
    processor = SampleProcessor(SeededCrop(16), seed=0, extra_keys=("teacher_image",))
    items = [processor(i, s) for i, s in enumerate(samples)]
    batch = Collator(get_tokenizer(24), (0.5,) * 3, (0.5,) * 3)(items, 4, {})
    assert batch.extra["teacher_image"].shape == (4, 3)
    assert batch.rows(slice(2, 4)).extra["teacher_image"][:, 0].tolist() == [2.0, 3.0]
    bare = Sample(samples[0].image, ["a caption"], {})
    assert processor(9, bare).skip == "missing_meta:teacher_image"


def _manifest(tmp_path, samples):
    return str(write_manifest(samples, tmp_path / "data", fmt="jsonl"))


def _with_teacher(samples, dim=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for s in samples:
        s.meta["teacher_image"] = torch.randn(dim, generator=g).tolist()
        s.meta["teacher_text"] = torch.randn(dim, generator=g).tolist()
        out.append(s)
    return out


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    # The training-curve plot costs more than these few-step runs; it is tested elsewhere.
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)


CASES = {
    # EMA teacher (a second model in the state) and per-step random draws (a step buffer).
    "ema+steps": dict(loss="distill+0.5*rafa+0.5*mixup", teacher="ema", teacher_ema_decay=0.5),
    # Trainable objective parameters (Symile's third-view encoder) and stored teacher
    # embeddings carried from the samples' meta into the batch.
    "params+stored": dict(loss="symile+distill", teacher="data", symile_categories=4),
    # A trained head (CoCa's caption decoder, attentive masking) and region boxes and
    # phrases carried through the pipeline (crops move the boxes).
    "decoder+regions": dict(loss="clip+coca+region", coca_keep=0.5, region_tic=0.1),
    # A running bank of embeddings and k-means prototypes refreshed every step.
    "prototypes": dict(loss="clip+proto", proto_k=4, proto_bank=16, proto_every=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_restores_objective_state_exactly(tmp_path, micro_args, case):
    kw = dict(CASES[case])
    if case == "params+stored":
        tri = TriModalShapes(16, categories=4)
        kw["data"] = _manifest(tmp_path, _with_teacher([tri.sample(i) for i in range(24)]))
    ref = train(_cfg(tmp_path, micro_args, "ref", **kw))
    # The same run stopped after 2 of 4 steps (warm-up covers both, so the learning rates
    # agree), then resumed with the full step count.
    part = train(_cfg(tmp_path, micro_args, "part", **{**kw, "steps": 2}))
    cfg = yaml.safe_load((part / "config.yaml").read_text())
    (part / "config.yaml").write_text(yaml.safe_dump({**cfg, "steps": 4}))
    (part / "checkpoints" / "final.pt").unlink()
    train(_cfg(tmp_path, micro_args, "part"), resume=part)
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "objective"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert [r["loss"] for r in _rows(ref) if "loss" in r] == [
        r["loss"] for r in _rows(part) if "loss" in r
    ]
    trained = [k for k, v in a["objective"].items() if v.dtype.is_floating_point]
    if case == "params+stored":  # the encoder's parameters have optimizer state of their own
        n_opt = sum(len(g["params"]) for g in a["optimizer"]["param_groups"])
        n_model = len(list(create_model("tiny", micro_args).parameters()))
        assert n_opt == n_model + len(list(SymileObjective(4, 32).parameters()))
        assert any(k.startswith("terms.0.third.") for k in trained)
    elif case == "prototypes":
        assert bool(a["objective"]["terms.1.ready"]) and int(a["objective"]["terms.1.step"]) == 4
    elif case == "decoder+regions":
        assert any(k.startswith("terms.1.decoder.") for k in trained)
        for k, v in a["heads"]["decoder"]["state"].items():  # the head as loading reads it
            assert torch.equal(v, b["heads"]["decoder"]["state"][k]), k
    else:
        assert any(".teacher." in k for k in trained)
        assert int(a["objective"]["terms.1.step"]) == 4


def test_meta_fields_need_data_files(tmp_path, micro_args):
    with pytest.raises(ClipforgeError, match="teacher_image, teacher_text .* pass --data"):
        train(_cfg(tmp_path, micro_args, loss="distill", teacher="data", steps=1))
