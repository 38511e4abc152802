"""The training run config: every field with its help text and, if numeric, its range
beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipforge.config import option
from clipforge.losses import LossOptions
from clipforge.ranges import (
    below_one,
    count,
    count0,
    fraction,
    integers,
    non_negative,
    positive,
    probability,
)


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to ``RUN_DIR/config.yaml``.

    ``loss_options`` is the section of the objectives' own options (``--loss.NAME`` or
    ``--name``; in YAML a ``loss_options`` mapping or top-level keys).
    """

    model: str = option("tiny", "model preset (see `clipforge models`)")
    model_args: dict[str, Any] = option(
        factory=dict, help="preset overrides, e.g. vision.width=256,text.layers=2"
    )
    loss: str = option(
        "clip", "objective name or sum, e.g. clip+0.1*uniformity (see `clipforge losses`)"
    )
    init_temperature: float = option(
        0.0,
        "softmax temperature the new model starts at (0 = the objective's own: 0.07 for clip)",
        check=non_negative,
    )
    data: str | None = option(
        None, "CSV/TSV/JSONL manifest, tar shard pattern or folder; none = the shapes world"
    )
    shapes_args: dict[str, Any] = option(
        factory=dict,
        help="shapes-world generator overrides, e.g. count_weights=[0.2,0.6,0.1,0.1],group_prob=0.3",
    )
    init: str | None = option(
        None, "start from the weights of this checkpoint or run folder (fine-tuning)"
    )
    # Fine-tuning: what trains (locked towers, LoRA) and what the image tower sees.
    lr_layer_decay: float = option(
        1.0,
        "layer-wise learning-rate decay: a block d layers below the top trains at lr * this^d (1 = off)",
        check=fraction,
    )
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay, saved as checkpoints/ema.pt (0 = off)",
        check=below_one,
    )
    grad_checkpointing: bool = option(
        False, "recompute each transformer block's activations in the backward (less memory)"
    )
    lock_image: bool = option(False, "lock the image tower: no gradient, no optimizer state (LiT)")
    lock_image_unlocked_layers: int = option(
        0, "with --lock-image, train this many last blocks and the head after them", check=count0
    )
    lock_text: bool = option(False, "lock the text tower: no gradient, no optimizer state")
    lock_text_unlocked_layers: int = option(
        0, "with --lock-text, train this many last blocks and the head after them", check=count0
    )
    freeze_norms: bool = option(False, "freeze the gains and biases of every norm layer")
    lora_rank: int = option(
        0, "LoRA rank: train only low-rank adapters of --lora-targets (0 = off)", check=count0
    )
    lora_alpha: float = option(
        16.0, "LoRA scale numerator: adapters add (alpha / rank) B A x", check=positive
    )
    lora_targets: str = option(
        "qkv,proj,fc1,fc2", "layers of every block that get LoRA adapters, from qkv,proj,fc1,fc2"
    )
    patch_dropout: float = option(
        0.0,
        "share of image patch tokens dropped per sample in training (FLIP); none in eval",
        check=below_one,
    )
    moe_aux_weight: float = option(
        0.01,
        "with a mixture-of-experts model (clipforge upcycle): weight of the routers' load-balancing loss",
        check=non_negative,
    )
    image_key: str = option("image", "manifest column holding the image path")
    caption_key: str = option(
        "caption", "manifest column holding the caption (comma-separated: several captions)"
    )
    caption: str = option(
        "random", "caption choice when a sample has several: random, first or all (all positives)"
    )
    max_captions: int = option(
        4, "with --caption all, at most this many captions per image", check=count
    )
    hard_negatives: str = option(
        "",
        "hard-negative captions per sample, comma list of attribute,relation,count,shape (shapes world) or 'given' (meta hard_negatives of the data)",
    )
    caption_noise: float = option(
        0.0,
        "swap this fraction of captions between the samples of each batch, seeded (noisy-pair experiments)",
        check=probability,
    )
    hard_negative_weight: float = option(
        1.0, "multiply the softmax weight of hard-negative columns (clip loss)", check=positive
    )
    loss_options: LossOptions = option(
        factory=LossOptions,
        help="options of the objectives, each declared beside its objective",
        prefix="loss",
    )
    shuffle_buffer: int = option(
        1000, "samples in each tar-shard stream's shuffle buffer (0 = shard order)", check=count0
    )
    resample: bool = option(
        False, "draw tar shards with replacement instead of each once per epoch"
    )
    text_word_dropout: float = option(
        0.0, "probability of dropping each caption word", check=below_one
    )
    text_sentence_shuffle: bool = option(False, "shuffle the sentences of multi-sentence captions")
    text_synonyms: str | None = option(
        None, "synonym file (comma-separated groups, one per line) for synonym swap"
    )
    text_synonym_prob: float = option(
        0.0, "probability of swapping each listed word for a synonym", check=probability
    )
    batch_size: int = option(
        128,
        "samples per optimizer step (global: split evenly over torchrun processes)",
        check=integers(2),
    )
    steps: int = option(350, "optimizer steps", check=count)
    lr: float = option(2e-3, "peak learning rate (AdamW)", check=positive)
    min_lr_ratio: float = option(
        0.1, "final learning rate as a fraction of the peak (cosine decay)", check=probability
    )
    warmup: int = option(50, "linear warm-up steps", check=count0)
    weight_decay: float = option(
        0.05,
        "AdamW weight decay (not applied to norms, biases, embeddings, scale)",
        check=non_negative,
    )
    beta1: float = option(0.9, "AdamW beta1", check=below_one)
    beta2: float = option(0.98, "AdamW beta2", check=below_one)
    eps: float = option(1e-6, "AdamW epsilon", check=positive)
    grad_clip: float = option(1.0, "clip the global gradient norm (0 = off)", check=non_negative)
    accum_steps: int = option(
        1, "split each batch into this many micro-batches (gradients averaged)", check=count
    )
    accum_exact: bool = option(
        False,
        "with --accum-steps, gradient caching: embed the batch without a graph, take the full-batch loss, back-propagate each micro-batch (exact large batches)",
    )
    local_loss: bool = option(
        False,
        "under torchrun, each process computes only its rows' loss terms against the gathered batch (less memory, same gradients)",
    )
    siglip_chunked: bool = option(
        False,
        "under torchrun with --loss siglip, pass text chunks round a ring instead of gathering them (implies per-process loss terms)",
    )
    fsdp: bool = option(
        False,
        "under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2); checkpoints hold full weights",
    )
    compile: bool = option(
        False,
        "torch.compile the model for training (pays only on long runs: see README, Fine-tuning)",
    )
    dist_backend: str = option(
        "auto", "under torchrun: auto (nccl with CUDA, else gloo), gloo or nccl"
    )
    precision: str = option(
        "auto",
        "auto (bf16 where the hardware runs it natively and the model is wide enough to gain, else fp32; the choice is printed and saved in precision.json), fp32, bf16 (autocast) or fp64 (rounding-free checks of parallel and resumed runs)",
    )
    crop_scale: float = option(
        0.8, "smallest area fraction of the random resized crop", check=fraction
    )
    flip: bool = option(False, "random horizontal flip (corrupts left/right captions)")
    seed: int = option(0, "random seed (model init, data order, augmentation)", check=count0)
    threads: int = option(2, "torch intra-op threads", check=count)
    workers: int = option(
        0, "data-loading worker processes (0 = in the training process)", check=count0
    )
    log_every: int = option(10, "steps between metric lines", check=count)
    log: str = option(
        "jsonl",
        "metric logs: jsonl (metrics.jsonl, always written) or tensorboard (also RUN/tensorboard/ event files)",
    )
    eval_every: int = option(
        175, "steps between held-out evaluations (0 = only at the end)", check=count0
    )
    evals: str = option(
        "zeroshot,retrieval",
        "eval tasks run on the shapes world during and after training, comma-separated (see `clipforge eval --tasks all`; none = no evaluation)",
    )
    ckpt_every: int = option(100, "steps between checkpoints", check=count)
    eval_per_class: int = option(25, "images per class in the zero-shot evaluation", check=count)
    eval_pairs: int = option(1000, "image-text pairs in the retrieval evaluation", check=count)
    max_skip_rate: float = option(
        0.5,
        "fail when more than this fraction of samples was skipped (judged from 1000 samples on, or at the end of a shorter run)",
        check=probability,
    )
    progress: bool = option(True, "show a progress bar")
    out: str | None = option(None, "run folder (default runs/YYYYmmdd-HHMMSS)")
