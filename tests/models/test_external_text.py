"""A text tower of pre-computed caption embeddings (``text.external_dim``, LLM2CLIP)."""

import json
from dataclasses import replace

import pytest
import torch

from clipforge.data.shapes import ShapesWorld
from clipforge.data.writers import write_manifest
from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, get_model_config, load
from clipforge.models.external_text import ExternalText
from clipforge.train import TrainConfig, train
from tests.conftest import MICRO_ARGS

DIM = 12
EXTERNAL = {**MICRO_ARGS, "text.external_dim": DIM}


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("clipforge.train.plots.plot_curve", lambda *a, **k: None)


def _manifest(tmp_path) -> str:
    """16 shapes-world samples, each with a stored caption embedding in its meta: a fixed
    random vector per caption word, summed (a stand-in for an LLM's embedding)."""
    world = ShapesWorld(16, split="train", seed=0)
    g = torch.Generator().manual_seed(0)
    words: dict[str, torch.Tensor] = {}
    samples = []
    for i in range(16):
        s = world.sample(i)
        vec = torch.zeros(DIM)
        for w in s.texts[0].split():
            vec += words.setdefault(w, torch.randn(DIM, generator=g))
        s.texts = s.texts[:1]
        s.meta["text_embedding"] = vec.tolist()
        samples.append(s)
    return str(write_manifest(samples, tmp_path / "data", fmt="jsonl"))


def test_the_external_tower_is_a_projection():
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", EXTERNAL))
    assert isinstance(model.text, ExternalText)
    names = {n for n, _ in model.text.named_parameters()}
    assert names == {"norm.weight", "norm.bias", "proj.weight"}  # no token table, no blocks
    emb = torch.randn(3, DIM)
    out = model.encode_text(emb, normalize=True)
    ref = torch.nn.functional.normalize(model.text.proj(model.text.norm(emb)), dim=-1)
    assert torch.equal(out, ref) and out.shape == (3, 32)
    with pytest.raises(ClipforgeError, match="must hold 12 numbers"):
        model.encode_text(torch.randn(3, DIM + 1))
    with pytest.raises(ClipforgeError, match="not token ids"):
        model.encode_text(torch.ones(3, DIM, dtype=torch.long))


def test_training_end_to_end_on_stored_embeddings(tmp_path):
    cfg = TrainConfig(
        model_args=EXTERNAL, data=_manifest(tmp_path), batch_size=8, steps=3, warmup=1,
        log_every=1, eval_every=0, threads=1, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    start = CLIP(get_model_config("tiny", EXTERNAL)).state_dict()
    run = train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    model = load(run)
    assert isinstance(model.text, ExternalText)
    after = model.state_dict()
    # The projection trained (the loss reached it through the stored vectors).
    assert not torch.equal(after["text.proj.weight"], start["text.proj.weight"])
    with pytest.raises(ClipforgeError, match="pass --data"):
        train(replace(cfg, data=None, out=str(tmp_path / "b")))
    with pytest.raises(ClipforgeError, match="cannot be combined with --caption all"):
        train(replace(cfg, caption="all", out=str(tmp_path / "c")))
