"""Fine-tuning a SigLIP checkpoint (``--init`` a Hugging Face folder with ``spiece.model``):
the run tokenizes with that SentencePiece model, and its checkpoints keep it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from clipforge.data.hf_tokenizers import SentencePieceTokenizer, TokenizerSpec
from clipforge.errors import ClipforgeError
from clipforge.models import create_model, load, save_checkpoint, tokenizer_for
from clipforge.train import TrainConfig, builders, train
from clipforge.train.distributed import World
from tests.conftest import MICRO_ARGS
from tests.index.test_embed import SIGLIP_LAYOUT
from tests.spiece import spiece_model

pytest.importorskip("sentencepiece")

ARGS = {**MICRO_ARGS, **SIGLIP_LAYOUT}


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(
        model_args=ARGS, loss="siglip", batch_size=8, steps=2, warmup=1, log_every=1,
        eval_every=0, ckpt_every=1, evals="none", progress=False, out=str(tmp_path / name),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def siglip_folder(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", ARGS, init_logit_bias=-10.0)
    model.tokenizer_spec = TokenizerSpec("sentencepiece", spiece_model())
    save_checkpoint(model, tmp_path / "siglip", "hf")
    return tmp_path / "siglip", model.tokenizer_spec


def test_init_from_a_siglip_folder_trains_on_its_sentencepiece_ids(tmp_path, siglip_folder):
    folder, spec = siglip_folder
    cfg = _cfg(tmp_path, "ft", init=str(folder))
    parts = builders.build(cfg, World())
    assert isinstance(parts.tokenizer, SentencePieceTokenizer) and parts.tokenizer_spec == spec
    assert parts.collate.tokenizer is parts.tokenizer  # the batches' token rows
    run = train(cfg)
    for name in ("last.pt", "final.pt"):
        assert load(run.run_dir / "checkpoints" / name).tokenizer_spec == spec
    assert isinstance(tokenizer_for(load(run.run_dir)), SentencePieceTokenizer)
    # A resumed run takes the tokenizer from its own last.pt.
    state = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert builders.run_tokenizer(cfg, state) == spec
    assert builders.run_tokenizer(_cfg(tmp_path, "x"), None) is None  # no --init: CLIP's BPE


def test_a_teacher_that_tokenizes_otherwise_is_refused(tmp_path, siglip_folder):
    folder, _ = siglip_folder
    torch.manual_seed(1)
    teacher = create_model("tiny", ARGS, init_logit_bias=-10.0)  # CLIP's BPE
    save_checkpoint(teacher, tmp_path / "teacher.pt", "clipforge")
    options = replace(TrainConfig().loss_options, teacher=str(tmp_path / "teacher.pt"))
    cfg = _cfg(tmp_path, "kd", loss="distill", init=str(folder), loss_options=options)
    with pytest.raises(ClipforgeError, match="teacher tokenizes with CLIP's BPE"):
        train(cfg)
