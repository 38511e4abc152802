"""--precision auto: what it picks, that the choice is saved, and the bf16 parity check."""

import json

import pytest
import torch

from clipforge import precision
from clipforge.data.tokenizer import get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.datasets import ImageSet
from clipforge.eval.embed import Embedder
from clipforge.models import create_model
from clipforge.precision import CROSSOVER, bf16_hardware, resolve
from clipforge.train import TrainConfig, train

CPU = torch.device("cpu")


def test_explicit_precisions_are_kept_and_unknown_refused():
    for name in ("fp32", "bf16", "fp64"):
        assert resolve(name, 8, CPU).name == name
    with pytest.raises(ClipforgeError, match="unknown precision 'fp16'"):
        resolve("fp16", 8, CPU)


def test_auto_follows_hardware_and_crossover_width(monkeypatch):
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 3.0)
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: None)
    assert resolve("auto", 4096, CPU).name == "fp32"
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "AMX-BF16")
    need = CROSSOVER["AMX-BF16"]["train"]
    below, at = resolve("auto", need - 1, CPU), resolve("auto", need, CPU)
    assert (below.name, at.name) == ("fp32", "bf16")
    assert str(need) in below.reason and "AMX-BF16" in at.reason


def test_auto_stays_in_fp32_where_bf16_measures_slow(monkeypatch):
    # Flags that announce bf16 are not enough: emulated bf16 matmuls measure 0.02-0.05x.
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "AMX-BF16")
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 0.04)
    got = resolve("auto", 4096, CPU)
    assert got.name == "fp32" and "0.04x" in got.reason and "AMX-BF16" in got.reason
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 4.0)
    assert resolve("auto", 4096, CPU).name == "bf16"


def test_matmul_probe_measures_a_positive_ratio_once():
    precision.bf16_matmul_speedup.cache_clear()
    first = precision.bf16_matmul_speedup()
    assert first > 0 and precision.bf16_matmul_speedup() == first  # cached: one measurement


def test_hardware_probe_names_a_crossover_row():
    assert bf16_hardware(CPU) in (None, *CROSSOVER)
    assert bf16_hardware(torch.device("meta")) is None


def _images(n: int, size: int) -> ImageSet:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pix = (torch.rand(n, size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    return ImageSet(f"random-{n}", n, lambda i: Image.fromarray(pix[i]))


def test_bf16_embedding_records_parity_with_fp32(micro_args):
    torch.manual_seed(0)
    model = create_model("tiny", micro_args)
    tok = get_tokenizer(model.cfg.text.context_length)
    images = _images(12, model.cfg.vision.image_size)
    fp32 = Embedder(model, tok, progress=False, precision="fp32")
    bf16 = Embedder(model, tok, progress=False, precision="bf16")
    a, b = fp32.images(images), bf16.images(images)
    ta, tb = fp32.texts(["a red circle", "two blue squares"]), bf16.texts(["a red circle", "x"])
    rec = bf16.precision_record
    assert rec["precision"] == "bf16" and fp32.precision_record["precision"] == "fp32"
    assert rec["image_parity"]["samples"] == 8 and rec["text_parity"]["samples"] == 2
    # bf16 keeps 8 significant bits: each weight and activation is off by <= 2^-9
    # relative, and the errors of a few layers add up to well under 1% of a feature's
    # norm: 1 - cosine ~ (relative error)^2 / 2 < 1e-4. A broken kernel (wrong layout,
    # wrong scale) gives cosines near 0.
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) > 1 - 1e-4
    assert rec["image_parity"]["min_cosine"] == pytest.approx(float(cos[:8].min()), abs=1e-5)
    assert float(torch.nn.functional.cosine_similarity(ta[:1], tb[:1])) > 1 - 1e-4
    assert not torch.equal(a, b)  # it really ran in bf16


def test_a_broken_bf16_path_falls_back_to_fp32(micro_args):
    torch.manual_seed(0)
    model = create_model("tiny", micro_args)
    tok = get_tokenizer(model.cfg.text.context_length)
    images = _images(10, model.cfg.vision.image_size)
    emb = Embedder(model, tok, progress=False, precision="bf16")

    def broken(x, normalize=False):  # a kernel that returns unrelated features
        return torch.nn.functional.normalize(torch.randn(len(x), model.cfg.embed_dim), dim=-1)

    emb._encoder.encode_image = broken
    with pytest.warns(UserWarning, match="disagree with float32"):
        got = emb.images(images)
    want = Embedder(model, tok, progress=False, precision="fp32").images(images)
    assert torch.equal(got, want)
    assert emb.precision_record["precision"] == "fp32"
    assert emb.precision_record["image_parity"]["min_cosine"] < 0.999


def test_auto_choice_is_saved_as_the_resolved_config(tmp_path, micro_args, monkeypatch):
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "AMX-BF16")
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 3.0)
    monkeypatch.setitem(CROSSOVER, "AMX-BF16", {"train": 1, "infer": 1})
    cfg = TrainConfig(
        model_args=micro_args, batch_size=8, steps=4, warmup=1, log_every=2, ckpt_every=2,
        eval_every=0, evals="none", progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    assert cfg.precision == "auto"
    run = train(cfg)
    saved = json.loads((run / "precision.json").read_text())
    assert saved["precision"] == "bf16" and saved["reason"].startswith("auto: AMX-BF16")
    # The saved config holds the choice, not "auto": a resumed run keeps it on any machine.
    assert "precision: bf16" in (run / "config.yaml").read_text()
