"""The training run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to ``RUN_DIR/config.yaml``."""

    model: str = "tiny"
    model_args: dict[str, Any] = field(default_factory=dict)
    loss: str = "clip"
    data: str | None = None
    shapes_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    image_key: str = "image"
    caption_key: str = "caption"
    caption: str = "random"
    max_captions: int = 4
    hard_negatives: str = ""
    hard_negative_weight: float = 1.0
    # Options of the objectives in clipforge.losses (each read by the losses that name it).
    hopfield_beta: float | None = None
    reference: str | None = None
    teacher: str | None = None
    teacher_ema_decay: float = 0.999
    distill_weight: float = 0.5
    distill_temperature: float | None = None
    distill_feature_weight: float = 0.0
    mixup_alpha: float = 0.5
    symile_categories: int = 8
    shuffle_buffer: int = 1000
    resample: bool = False
    text_word_dropout: float = 0.0
    text_sentence_shuffle: bool = False
    text_synonyms: str | None = None
    text_synonym_prob: float = 0.0
    batch_size: int = 128
    steps: int = 350
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    accum_steps: int = 1
    local_loss: bool = False
    siglip_chunked: bool = False
    dist_backend: str = "auto"
    precision: str = "fp32"
    crop_scale: float = 0.8
    flip: bool = False
    seed: int = 0
    threads: int = 2
    workers: int = 0
    log_every: int = 10
    eval_every: int = 175
    evals: str = "zeroshot,retrieval"
    ckpt_every: int = 100
    eval_per_class: int = 25
    eval_pairs: int = 1000
    max_skip_rate: float = 0.5
    progress: bool = True
    out: str | None = None


HELP: dict[str, str] = {
    "model": "model preset (see `clipforge models`)",
    "model_args": "preset overrides, e.g. vision.width=256,text.layers=2",
    "loss": "objective name or sum, e.g. clip+0.1*uniformity (see `clipforge losses`)",
    "data": "CSV/TSV/JSONL manifest, tar shard pattern or folder; none = the shapes world",
    "shapes_args": "shapes-world generator overrides, e.g. count_weights=[0.2,0.6,0.1,0.1],"
    "group_prob=0.3",
    "init": "start from the weights of this checkpoint or run folder (fine-tuning)",
    "image_key": "manifest column holding the image path",
    "caption_key": "manifest column holding the caption (comma-separated: several captions)",
    "caption": "caption choice when a sample has several: random, first or all (all positives)",
    "max_captions": "with --caption all, at most this many captions per image",
    "hard_negatives": "hard-negative captions per sample, comma list of attribute,relation,"
    "count,shape (shapes world) or 'given' (meta hard_negatives of the data)",
    "hard_negative_weight": "multiply the softmax weight of hard-negative columns (clip loss)",
    "hopfield_beta": "infoloob: inverse temperature of CLOOB's Hopfield retrieval (none/0 = off)",
    "reference": "cwcl: frozen reference model (run folder or checkpoint) for the soft targets",
    "teacher": "distill: 'ema' (average of the student), 'data' (meta teacher_image/"
    "teacher_text) or a run folder / checkpoint (frozen)",
    "teacher_ema_decay": "distill with --teacher ema: decay of the moving average per step",
    "distill_weight": "distill: loss = (1 - w) contrastive + w KL(teacher || student)",
    "distill_temperature": "distill: teacher softmax temperature (none = the teacher's own, "
    "0.01 for stored embeddings)",
    "distill_feature_weight": "distill: weight of the 1 - cos(student, teacher) feature term",
    "mixup_alpha": "mixup: the mixing ratio is drawn from Beta(alpha, alpha) each step",
    "symile_categories": "symile: number of values of the third view (meta 'third')",
    "shuffle_buffer": "samples in each tar-shard stream's shuffle buffer (0 = shard order)",
    "resample": "draw tar shards with replacement instead of each once per epoch",
    "text_word_dropout": "probability of dropping each caption word",
    "text_sentence_shuffle": "shuffle the sentences of multi-sentence captions",
    "text_synonyms": "synonym file (comma-separated groups, one per line) for synonym swap",
    "text_synonym_prob": "probability of swapping each listed word for a synonym",
    "batch_size": "samples per optimizer step (global: split evenly over torchrun processes)",
    "steps": "optimizer steps",
    "lr": "peak learning rate (AdamW)",
    "min_lr_ratio": "final learning rate as a fraction of the peak (cosine decay)",
    "warmup": "linear warm-up steps",
    "weight_decay": "AdamW weight decay (not applied to norms, biases, embeddings, scale)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "eps": "AdamW epsilon",
    "grad_clip": "clip the global gradient norm (0 = off)",
    "accum_steps": "split each batch into this many micro-batches (gradients averaged)",
    "local_loss": "under torchrun, each process computes only its rows' loss terms against "
    "the gathered batch (less memory, same gradients)",
    "siglip_chunked": "under torchrun with --loss siglip, pass text chunks round a ring instead "
    "of gathering them (implies per-process loss terms)",
    "dist_backend": "under torchrun: auto (nccl with CUDA, else gloo), gloo or nccl",
    "precision": "fp32, bf16 (autocast) or fp64 (rounding-free checks of parallel and resumed runs)",
    "crop_scale": "smallest area fraction of the random resized crop",
    "flip": "random horizontal flip (corrupts left/right captions)",
    "seed": "random seed (model init, data order, augmentation)",
    "threads": "torch intra-op threads",
    "workers": "data-loading worker processes (0 = in the training process)",
    "log_every": "steps between metric lines",
    "eval_every": "steps between held-out evaluations (0 = only at the end)",
    "evals": "eval tasks run on the shapes world during and after training, comma-separated "
    "(see `clipforge eval --tasks all`; none = no evaluation)",
    "ckpt_every": "steps between checkpoints",
    "eval_per_class": "images per class in the zero-shot evaluation",
    "eval_pairs": "image-text pairs in the retrieval evaluation",
    "max_skip_rate": "fail when more than this fraction of samples was skipped (judged from "
    "1000 samples on, or at the end of a shorter run)",
    "progress": "show a progress bar",
    "out": "run folder (default runs/YYYYmmdd-HHMMSS)",
}
