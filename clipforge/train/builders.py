"""From a :class:`TrainConfig` to the parts of a run, every option checked once.

:func:`build` runs before the run folder exists, so a bad option, data path or
objective setting leaves nothing behind. A new training option is checked and built
here, not in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from clipforge.config import check_ranges
from clipforge.data.batches import CAPTION_STRATEGIES, Collator, SampleProcessor
from clipforge.data.hf_tokenizers import TokenizerSpec
from clipforge.data.shapes import ShapesConfig, ShapesWorld
from clipforge.data.sources import ShapesSource, Source, open_source
from clipforge.data.textaug import TextAugment
from clipforge.data.tokenizer import Tokenizer, get_tokenizer
from clipforge.data.transforms import SeededCrop
from clipforge.errors import ClipforgeError
from clipforge.eval.suite import resolve_tasks
from clipforge.losses import LossSpec, get_loss
from clipforge.losses.base import Objective
from clipforge.models import ModelConfig, get_model_config
from clipforge.models.external_text import TEXT_EMBEDDING
from clipforge.models.loading import tokenizer_spec_of
from clipforge.precision import PRECISIONS, Precision, model_width, resolve
from clipforge.train import distributed, finetune, fsdp
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World
from clipforge.train.step import check_cacheable


@dataclass
class RunParts:
    """What a run is made of, before the model exists."""

    model_config: ModelConfig
    loss: LossSpec
    objective: Objective
    tokenizer: Tokenizer | Any  # CLIP's BPE, or the tokenizer --init's checkpoint ships
    source: Source
    processor: SampleProcessor
    collate: Collator
    evals: list[str]  # eval tasks on the shapes world; empty with --data or evals=none
    precision: Precision  # --precision resolved: auto becomes fp32 or bf16 here
    tokenizer_spec: TokenizerSpec | None = None  # what the checkpoints store (None: CLIP's)


def build(cfg: TrainConfig, world: World, state: Mapping[str, Any] | None = None) -> RunParts:
    """Check ``cfg`` and build everything but the model, for this process of ``world``.

    The tokenizer is the one the model's weights were trained with: a resumed run's
    (``state``, its ``last.pt``), else that of the ``--init`` checkpoint (a SigLIP
    folder's SentencePiece model), else CLIP's BPE."""
    check_config(cfg)
    distributed.check_batch(world, cfg.batch_size, cfg.accum_steps)
    mcfg = get_model_config(cfg.model, cfg.model_args)
    spec = get_loss(cfg.loss)
    if cfg.init_temperature:
        spec = replace(spec, init_logit_scale=math.log(1 / cfg.init_temperature))
    # Seeded on its own so objective parameters do not shift the model's initialisation.
    torch.manual_seed(cfg.seed)
    objective = spec.build(cfg)
    if objective.batch_keys and cfg.data is None:
        raise ClipforgeError(
            f"loss {cfg.loss!r} reads {', '.join(objective.batch_keys)} from each sample's meta, "
            "which the built-in shapes world does not have: pass --data"
        )
    if cfg.local_loss and not cfg.siglip_chunked and not objective.computes_shares:
        raise ClipforgeError(
            f"loss {cfg.loss!r} cannot compute per-process shares; drop --local-loss"
        )
    if cfg.siglip_chunked and not objective.ring_chunkable:
        raise ClipforgeError(f"--siglip-chunked needs --loss siglip, not {cfg.loss!r}")
    finetune.check(cfg, mcfg)
    check_external_text(cfg, mcfg)
    fsdp.check(cfg, world, objective)
    if cfg.accum_exact:
        check_cacheable(cfg, objective, world)
    size = mcfg.vision.image_size
    processor = SampleProcessor(
        SeededCrop(size, (cfg.crop_scale, 1.0), flip=cfg.flip),
        seed=cfg.seed,
        caption=cfg.caption,
        max_captions=cfg.max_captions,
        hard_negatives=hard_negative_kinds(cfg),
        text_aug=build_text_aug(cfg),
        extra_keys=objective.batch_keys + ((TEXT_EMBEDDING,) if mcfg.text.external_dim else ()),
        regions=objective.regions,
    )
    evals = [] if cfg.data is not None or cfg.evals in ("", "none") else resolve_tasks(cfg.evals)
    tok_spec = run_tokenizer(cfg, state)
    length = mcfg.text.context_length
    tokenizer = get_tokenizer(length) if tok_spec is None else tok_spec.build(length)
    precision = resolve(cfg.precision, model_width(mcfg), world.device, use="train")
    return RunParts(
        mcfg, spec, objective, tokenizer, build_source(cfg, size), processor,
        Collator(tokenizer, mcfg.mean, mcfg.std, cfg.caption_noise, cfg.seed, objective.regions),
        evals, precision, tok_spec,
    )  # fmt: skip


def run_tokenizer(cfg: TrainConfig, state: Mapping[str, Any] | None) -> TokenizerSpec | None:
    """The tokenizer of a run's model (see :func:`build`); ``None`` is CLIP's BPE."""
    if state is not None:
        entry = state.get("tokenizer")
        return None if entry is None else TokenizerSpec.from_payload(entry, "the run's last.pt")
    return tokenizer_spec_of(cfg.init, "--init") if cfg.init else None


def check_config(cfg: TrainConfig) -> None:
    """Every field in its declared range (sections included), then the choices among
    names and the checks of fields against each other."""
    check_ranges(cfg)
    if cfg.init_temperature and cfg.init:
        # A loaded checkpoint brings its own learned temperature, which would win silently.
        raise ClipforgeError(
            f"--init-temperature sets a new model's temperature; --init {cfg.init} loads "
            "the checkpoint's own: drop one"
        )
    if cfg.batch_size % cfg.accum_steps:
        raise ClipforgeError(
            f"batch size {cfg.batch_size} is not divisible by accum steps {cfg.accum_steps}"
        )
    if cfg.precision not in PRECISIONS:
        raise ClipforgeError(
            f"unknown precision {cfg.precision!r} (known: {', '.join(PRECISIONS)})"
        )
    if cfg.caption not in CAPTION_STRATEGIES:
        raise ClipforgeError(
            f"unknown caption strategy {cfg.caption!r} (known: {', '.join(CAPTION_STRATEGIES)})"
        )
    if cfg.log not in ("jsonl", "tensorboard"):
        raise ClipforgeError(f"unknown --log {cfg.log!r} (known: jsonl, tensorboard)")
    if cfg.log == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ClipforgeError(
                "--log tensorboard needs the tensorboard extra: pip install 'clipforge[tensorboard]'"
            ) from None
    if cfg.dist_backend not in distributed.BACKENDS:
        raise ClipforgeError(
            f"unknown dist backend {cfg.dist_backend!r} (known: {', '.join(distributed.BACKENDS)})"
        )


def check_external_text(cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """Refuse, in one line, what a text tower of stored caption embeddings cannot do."""
    if not mcfg.text.external_dim:
        return
    if cfg.data is None:
        raise ClipforgeError(
            f"text.external_dim reads each sample's meta {TEXT_EMBEDDING}, which the shapes "
            "world does not have: pass --data"
        )
    for bad, flag in (
        (cfg.caption == "all", "--caption all (one stored embedding per sample)"),
        (bool(cfg.hard_negatives), "--hard-negatives (they have no stored embeddings)"),
        (cfg.accum_exact, "--accum-exact"),
        (cfg.text_word_dropout > 0 or cfg.text_sentence_shuffle or cfg.text_synonym_prob > 0,
         "caption augmentation (the embeddings are fixed)"),
    ):  # fmt: skip
        if bad:
            raise ClipforgeError(f"text.external_dim cannot be combined with {flag}")


def hard_negative_kinds(cfg: TrainConfig) -> tuple[str, ...]:
    """The perturbation kinds named by ``--hard-negatives`` ('given' = the data's own)."""
    from clipforge.data.shapes.hardneg import TRAINING_PERTURBATIONS as KINDS

    kinds = tuple(k.strip() for k in cfg.hard_negatives.split(",") if k.strip())
    for k in kinds:
        if k not in (*KINDS, "given"):
            raise ClipforgeError(
                f"unknown hard-negative kind {k!r} (known: {', '.join(KINDS)}, given)"
            )
    return tuple(k for k in kinds if k != "given")


def shapes_config(cfg: TrainConfig) -> ShapesConfig:
    """The shapes-world generator of a run: the defaults with ``--shapes-args`` applied."""
    known = {f.name for f in fields(ShapesConfig)} - {"image_size"}
    unknown = sorted(set(cfg.shapes_args) - known)
    if unknown:
        raise ClipforgeError(
            f"unknown shapes-args {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    args = dict(cfg.shapes_args)
    if "count_weights" in args:
        w = args["count_weights"]
        if not isinstance(w, (list, tuple)) or not w or any(float(x) < 0 for x in w):
            raise ClipforgeError(f"shapes-args count_weights must be a list of weights, got {w!r}")
        args["count_weights"] = tuple(float(x) for x in w)
    if "colours" in args:
        c = args["colours"]
        if not isinstance(c, (list, tuple)) or not c:
            raise ClipforgeError(f"shapes-args colours must be a list of colour names, got {c!r}")
        args["colours"] = tuple(str(x) for x in c)
    if "long_captions" in args:
        p = args["long_captions"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ClipforgeError(f"shapes-args long_captions must be a share in [0, 1], got {p!r}")
        args["long_captions"] = float(p)
    return ShapesConfig(**args)


def build_source(cfg: TrainConfig, image_size: int) -> Source:
    """The sample stream ``cfg`` names: the shapes world, shards or a random-access set."""
    if cfg.data is None:
        return ShapesSource(
            ShapesWorld(image_size, split="train", seed=cfg.seed, config=shapes_config(cfg))
        )
    return open_source(
        cfg.data, seed=cfg.seed, image_key=cfg.image_key, caption_key=cfg.caption_key,
        shuffle_buffer=cfg.shuffle_buffer, resample=cfg.resample,
    )  # fmt: skip


def build_text_aug(cfg: TrainConfig) -> TextAugment | None:
    """The caption augmentation ``cfg`` asks for, or None when it asks for none."""
    from clipforge.data.textaug import load_synonyms

    synonyms = load_synonyms(cfg.text_synonyms) if cfg.text_synonyms else {}
    if cfg.text_synonym_prob > 0 and not synonyms:
        raise ClipforgeError("--text-synonym-prob needs a --text-synonyms file")
    aug = TextAugment(
        word_dropout=cfg.text_word_dropout,
        sentence_shuffle=cfg.text_sentence_shuffle,
        synonyms=synonyms,
        synonym_prob=cfg.text_synonym_prob,
    )
    return aug if aug.active else None
