"""A tiny SentencePiece model trained in the tests (offline, deterministic), standing in
for a real SigLIP checkpoint's ``spiece.model``: the same special-token layout as
SigLIP's (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no ``<s>``), a unigram vocabulary."""

from __future__ import annotations

import functools
import io
import random
from pathlib import Path

import pytest

WORDS = (
    "a photo of the red blue green circle square triangle star big small three two one "
    "cat dog on in left right above below picture drawing painting bright dark shiny "
    "striped dotted"
).split()
VOCAB_SIZE = 56  # what a few hundred captions of 30 words support (SentencePiece says so)


@functools.lru_cache(maxsize=1)
def spiece_model() -> bytes:
    """The serialized model, trained once per test process on 300 random captions."""
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


def add_spiece(folder: Path) -> Path:
    """Write ``spiece.model`` into a Hugging Face folder, as SigLIP's hub folders ship it."""
    path = Path(folder) / "spiece.model"
    path.write_bytes(spiece_model())
    return path


def add_gemma_json(folder: Path, padding_side: str | None = "right") -> Path:
    """Write a ``tokenizer.json`` laid out as SigLIP 2's Gemma tokenizer (``<pad>`` 0,
    ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, byte-fallback BPE, ``<bos>`` added in front, no
    lower-casing of its own) trained on the test words in both cases, and a
    ``tokenizer_config.json`` naming Gemma's class as the hub folders do."""
    import json

    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials, show_progress=False)
    lines = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok.train_from_iterator(lines + [line.upper() for line in lines], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "tokenizer.json"
    tok.save(str(path))
    config = {"tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>"}
    if padding_side is not None:
        config["padding_side"] = padding_side
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
    return path
