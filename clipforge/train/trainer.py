"""The training loop: one run folder holding config, metrics, checkpoints and plots.

Run folder layout::

    RUN_DIR/config.yaml          resolved TrainConfig
    RUN_DIR/model.yaml           resolved model architecture
    RUN_DIR/metrics.jsonl        one JSON object per logged step and per evaluation
    RUN_DIR/checkpoints/last.pt  model, optimizer, step, data position, RNG states
    RUN_DIR/checkpoints/final.pt the trained model (weights + architecture)
    RUN_DIR/eval.json            final held-out evaluation
    RUN_DIR/curve.png            training curve

Resume (``--resume RUN_DIR``) reloads ``last.pt`` and replays nothing: the data stream
restarts at the saved sample position and every sample's augmentation is seeded by its
position, so the resumed run reaches the same weights as an uninterrupted one.

Under ``torchrun`` (``python -m clipforge.train`` with the flags of ``clipforge train``)
every process runs :func:`train`; rank 0 alone writes the run folder. How the batch and
the loss are shared is in :mod:`clipforge.train.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from clipforge.config import from_dict, load_yaml, save_yaml, to_dict
from clipforge.data.pipeline import (
    CAPTION_STRATEGIES,
    Batch,
    Collator,
    IndexedSource,
    SampleProcessor,
    ShapesSource,
    ShardStream,
    Source,
    iter_batches,
)
from clipforge.data.shapes import ShapesConfig, ShapesWorld
from clipforge.data.textaug import TextAugment
from clipforge.data.tokenizer import get_tokenizer
from clipforge.data.transforms import SeededCrop
from clipforge.errors import ClipforgeError
from clipforge.eval.shapes import evaluate_shapes
from clipforge.losses import Features, get_loss
from clipforge.models import CLIP, ModelConfig, get_model_config
from clipforge.train import checkpoint as ckpt
from clipforge.train import distributed
from clipforge.train.collectives import gather_features
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World
from clipforge.train.optim import build_optimizer, cosine_lr
from clipforge.train.siglip_ring import siglip_ring_share


def build_source(cfg: TrainConfig, image_size: int) -> Source:
    """The sample stream ``cfg`` names: the shapes world, shards or a random-access set."""
    if cfg.data is None:
        return ShapesSource(
            ShapesWorld(image_size, split="train", seed=cfg.seed, config=shapes_config(cfg))
        )
    from clipforge.data.files import FolderDataset, ManifestDataset, ShardDataset, open_dataset

    ds = open_dataset(cfg.data, image_key=cfg.image_key, caption_key=cfg.caption_key)
    if isinstance(ds, ShardDataset):
        return ShardStream(ds, seed=cfg.seed, buffer=cfg.shuffle_buffer, resample=cfg.resample)
    if isinstance(ds, (ManifestDataset, FolderDataset)):
        if len(ds) == 0:
            raise ClipforgeError(f"{cfg.data}: the manifest has no rows")
        return IndexedSource(ds, seed=cfg.seed)
    raise ClipforgeError(f"unsupported data set {cfg.data}")  # pragma: no cover


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


def skip_summary(skipped: dict[str, int], samples: int) -> str:
    """One line per skip reason, most frequent first, for the end of a run."""
    total = sum(skipped.values())
    if not total:
        return f"skipped 0 of {samples} samples"
    lines = [f"skipped {total} of {samples} samples ({100 * total / max(samples, 1):.2f}%):"]
    width = max(len(r) for r in skipped)
    for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<{width}}  {n}")
    return "\n".join(lines)


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
    return ShapesConfig(**args)


def check_config(cfg: TrainConfig) -> None:
    if cfg.batch_size < 2:
        raise ClipforgeError("batch size must be >= 2 for a contrastive loss")
    if cfg.steps < 1:
        raise ClipforgeError("steps must be >= 1")
    if cfg.accum_steps < 1 or cfg.batch_size % cfg.accum_steps:
        raise ClipforgeError(
            f"batch size {cfg.batch_size} is not divisible by accum steps {cfg.accum_steps}"
        )
    if cfg.precision not in ("fp32", "bf16", "fp64"):
        raise ClipforgeError(f"unknown precision {cfg.precision!r} (known: fp32, bf16, fp64)")
    if cfg.caption not in CAPTION_STRATEGIES:
        raise ClipforgeError(
            f"unknown caption strategy {cfg.caption!r} (known: {', '.join(CAPTION_STRATEGIES)})"
        )
    if cfg.max_captions < 1:
        raise ClipforgeError("max captions must be >= 1")
    hard_negative_kinds(cfg)
    if cfg.hard_negative_weight <= 0:
        raise ClipforgeError("hard negative weight must be > 0")
    if not 0 < cfg.crop_scale <= 1:
        raise ClipforgeError("crop scale must be in (0, 1]")
    if cfg.shuffle_buffer < 0:
        raise ClipforgeError("shuffle buffer must be >= 0")
    if cfg.workers < 0:
        raise ClipforgeError("workers must be >= 0")
    if not 0 <= cfg.max_skip_rate <= 1:
        raise ClipforgeError("max skip rate must be in [0, 1]")
    get_loss(cfg.loss)
    if cfg.siglip_chunked and cfg.loss != "siglip":
        raise ClipforgeError(f"--siglip-chunked needs --loss siglip, not {cfg.loss!r}")
    if cfg.dist_backend not in distributed.BACKENDS:
        raise ClipforgeError(
            f"unknown dist backend {cfg.dist_backend!r} (known: {', '.join(distributed.BACKENDS)})"
        )
    if cfg.data is None:
        shapes_config(cfg)


def hard_negative_kinds(cfg: TrainConfig) -> tuple[str, ...]:
    """The perturbation kinds named by ``--hard-negatives`` ('given' = the data's own)."""
    from clipforge.data.hardneg import TRAINING_PERTURBATIONS as KINDS

    kinds = tuple(k.strip() for k in cfg.hard_negatives.split(",") if k.strip())
    for k in kinds:
        if k not in (*KINDS, "given"):
            raise ClipforgeError(
                f"unknown hard-negative kind {k!r} (known: {', '.join(KINDS)}, given)"
            )
    return tuple(k for k in kinds if k != "given")


def _norm(tensors: Iterator[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors)))


class MetricsLog:
    """Append-only JSONL, truncated back to the checkpoint on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def new_run_dir(out: str | None) -> Path:
    if out:
        return Path(out)
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def batch_loss(
    model: torch.nn.Module,
    objective: torch.nn.Module,
    part: Batch,
    world: World,
    local: bool = False,
    chunked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's loss to back-propagate, and the loss of the whole (micro-)batch to log.

    ``part`` is this rank's rows. With ``local`` or ``chunked`` the rank computes its share
    of the loss and back-propagates ``world.size`` times it; the reasons are in
    :mod:`clipforge.train.distributed`. The logged loss is the same on every rank.
    """
    extra = {**part.extra, **objective.prepare(part.images, part.tokens)}
    out = model(part.images, part.tokens)
    # The loss runs in float32 under bf16 autocast; a float64 model (the exactness tests)
    # keeps float64.
    image, text = (x if x.dtype == torch.float64 else x.float() for x in (out.image, out.text))
    f = Features(image, text, out.scale, out.bias, part.owner, part.weights, extra)
    if chunked:
        share = siglip_ring_share(f, world)
    elif local:
        share = objective(gather_features(f, world, local=True))
    else:
        loss = objective(gather_features(f, world))
        return loss, loss.detach()
    return share * world.size, distributed.all_sum(share, world)


def train(cfg: TrainConfig, resume: str | Path | None = None) -> Path:
    """Train a model as ``cfg`` says and return the run folder.

    With ``resume``, ``cfg`` is ignored except for ``progress`` and ``dist_backend``; the
    run continues from ``RUN_DIR/checkpoints/last.pt``. Started by torchrun, this process
    joins the process group for the run and leaves it afterwards.
    """
    world = distributed.setup(cfg.dist_backend)
    try:
        return _train(cfg, resume, world)
    finally:
        distributed.teardown(world)


def _train(cfg: TrainConfig, resume: str | Path | None, world: World) -> Path:
    state: dict[str, Any] | None = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ClipforgeError(f"not a clipforge run folder (no config.yaml): {run_dir}")
        saved = from_dict(TrainConfig, load_yaml(run_dir / "config.yaml"), str(run_dir))
        cfg = replace(saved, progress=cfg.progress)
        last = run_dir / "checkpoints" / "last.pt"
        state = ckpt.load(last) if last.exists() else None
    else:
        # A default folder name is a timestamp: rank 0's is the one every rank uses.
        run_dir = Path(distributed.broadcast(str(new_run_dir(cfg.out)), world))
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise ClipforgeError(
                f"run folder {run_dir} already holds a run; use --resume {run_dir} or another --out"
            )
    check_config(cfg)
    distributed.check_batch(world, cfg.batch_size, cfg.accum_steps)
    torch.set_num_threads(cfg.threads)
    mcfg = get_model_config(cfg.model, cfg.model_args)
    loss_spec = get_loss(cfg.loss)
    main = world.is_main
    # Built before the run folder exists, so a bad objective option leaves nothing behind;
    # seeded on its own so objective parameters do not shift the model's initialisation.
    torch.manual_seed(cfg.seed)
    objective = loss_spec.build(cfg)
    if objective.batch_keys and cfg.data is None:
        raise ClipforgeError(
            f"loss {cfg.loss!r} reads {', '.join(objective.batch_keys)} from each sample's meta, "
            "which the built-in shapes world does not have: pass --data"
        )
    if cfg.local_loss and not cfg.siglip_chunked and not objective.computes_shares:
        raise ClipforgeError(
            f"loss {cfg.loss!r} cannot compute per-process shares; drop --local-loss"
        )

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if state is None and main:
        cfg = replace(cfg, out=str(run_dir))
        save_yaml(cfg, run_dir / "config.yaml")
        (run_dir / "model.yaml").write_text(yaml.safe_dump(_model_dict(mcfg), sort_keys=False))

    torch.manual_seed(cfg.seed)
    model = CLIP(mcfg, loss_spec.init_logit_scale, loss_spec.init_logit_bias)
    if cfg.init and state is None:
        _init_weights_from(model, cfg.init)
    # On its device (and in its dtype) before the optimizer exists, so restored optimizer
    # state lands there too.
    model.to(world.device, torch.float64 if cfg.precision == "fp64" else None)
    objective.to(world.device)
    objective.attach(model)  # after --init: an EMA teacher starts from the loaded weights
    # An objective may own parameters (a third-modality encoder): they train with the model.
    # Objectives without any leave the parameter groups, so old checkpoints, unchanged.
    trained = torch.nn.ModuleList([model, objective])
    opt = build_optimizer(trained, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    tokenizer = get_tokenizer(mcfg.text.context_length)
    source = build_source(cfg, mcfg.vision.image_size)
    processor = SampleProcessor(
        SeededCrop(mcfg.vision.image_size, (cfg.crop_scale, 1.0), flip=cfg.flip),
        seed=cfg.seed,
        caption=cfg.caption,
        max_captions=cfg.max_captions,
        hard_negatives=hard_negative_kinds(cfg),
        text_aug=build_text_aug(cfg),
        extra_keys=objective.batch_keys,
    )
    collate = Collator(tokenizer, mcfg.mean, mcfg.std)

    # `positions[r]` is where rank r's stream continues; `position`, their sum, counts the
    # samples read by all ranks (skipped ones included).
    step, positions = 0, [0] * world.size
    skipped: dict[str, int] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if "objective" in state:
            objective.load_state_dict(state["objective"])
        step = int(state["step"])
        positions = distributed.saved_positions(state, world, run_dir)
        skipped = dict(state["skipped"])
        ckpt.set_rng_state(state["rng"])
    position = sum(positions)
    # DDP broadcasts rank 0's weights; every rank built and loaded the same ones anyway.
    ddp = distributed.wrap_model(model, world)
    if main:
        log = MetricsLog(run_dir / "metrics.jsonl", step if state is not None else None)

    def save_checkpoint() -> None:
        if not main:
            return
        ckpt.atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "objective": objective.state_dict(),
                "step": step,
                "position": position,
                "positions": positions,
                "skipped": skipped,
                "rng": ckpt.rng_state(),
                "model_config": _model_dict(mcfg),
            },
            run_dir / "checkpoints" / "last.pt",
        )

    def run_eval(split: str) -> dict[str, float]:
        return evaluate_shapes(
            model, tokenizer, split=split, per_class=cfg.eval_per_class, pairs=cfg.eval_pairs
        )

    amp = (
        torch.autocast(world.device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16"
        else contextlib.nullcontext()
    )
    model.train()
    batches = iter_batches(
        source,
        processor,
        collate,
        cfg.batch_size // world.size,
        start=positions[world.rank],
        workers=cfg.workers,
        rank=world.rank,
        world_size=world.size,
    )
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not (cfg.progress and main),
        desc="train",
        dynamic_ncols=True,
    )
    seen = 0
    t_last = time.perf_counter()
    n_since = 0
    while step < cfg.steps:
        batch: Batch = next(batches)
        lr = cfg.lr * cosine_lr(step, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        before = [p.detach().clone() for p in model.parameters()] if log_now else None

        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        micro = cfg.batch_size // world.size // cfg.accum_steps
        for k in range(cfg.accum_steps):
            part = _to(batch.rows(slice(k * micro, (k + 1) * micro)), world.device)
            # DDP averages gradients once per step, on the last micro-batch's backward.
            last = k + 1 == cfg.accum_steps
            with contextlib.nullcontext() if last else distributed.no_sync(ddp):
                with amp:
                    loss, logged = batch_loss(
                        ddp, objective, part, world, cfg.local_loss, cfg.siglip_chunked
                    )
                if not torch.isfinite(logged):
                    raise ClipforgeError(
                        f"loss became {float(logged)} at step {step + 1}; lower --lr"
                    )
                (loss / cfg.accum_steps).backward()
            loss_sum += float(logged) / cfg.accum_steps
        distributed.average_gradients(objective.parameters(), world)  # DDP holds only the model
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip))
            if cfg.grad_clip > 0
            else _norm(p.grad for p in trained.parameters() if p.grad is not None)
        )
        opt.step()
        objective.after_step(model)
        step += 1
        # Every rank keeps the totals of all ranks, so all take the same decisions below.
        positions, step_skipped = distributed.stream_state(
            batch.next_position, batch.skipped, world
        )
        position = sum(positions)
        for reason, n in step_skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        seen += cfg.batch_size
        n_since += cfg.batch_size
        n_skip = sum(skipped.values())
        # A few bad samples early on say little about the rate, so the check waits for
        # 1000 samples (or the end of a shorter run) before judging.
        judged = position >= min(1000, cfg.steps * cfg.batch_size)
        if judged and n_skip > cfg.max_skip_rate * position:
            raise ClipforgeError(
                f"{n_skip} of {position} samples were skipped (> --max-skip-rate "
                f"{cfg.max_skip_rate}): "
                + ", ".join(f"{r} {n}" for r, n in sorted(skipped.items(), key=lambda x: -x[1]))
            )
        bar.update(1)
        if log_now:
            now = time.perf_counter()
            rec = {
                "step": step,
                "loss": loss_sum,
                "lr": lr,
                "logit_scale": float(model.logit_scale_exp().detach()),
                "grad_norm": grad_norm,
                "param_norm": _norm(model.parameters()),
                "update_norm": _norm(
                    p - b for p, b in zip(model.parameters(), before or [], strict=True)
                ),
                "samples": position,
                "skipped": n_skip,
                "samples_per_s": n_since / max(now - t_last, 1e-9),
            }
            if model.logit_bias is not None:
                rec["logit_bias"] = float(model.logit_bias.detach())
            rec.update(objective.metrics())
            if main:
                log.write(rec)
            bar.set_postfix(loss=f"{loss_sum:.3f}", skipped=n_skip)
            t_last, n_since = now, 0
        if (
            main
            and cfg.eval_every
            and step % cfg.eval_every == 0
            and step < cfg.steps
            and cfg.data is None
        ):
            log.write({"step": step, "split": "val", **run_eval("val")})
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_checkpoint()
    bar.close()
    if not main:
        distributed.barrier(world)  # until rank 0 has written the run folder
        return run_dir

    # `samples` is the number of stream positions read, skipped ones included, so the
    # skip rate is skipped / samples.
    final: dict[str, Any] = {"step": step, "samples": position, "skipped": skipped}
    if cfg.data is None:
        final.update({"split": "test", **run_eval("test")})
    log.write({"step": step, "final": True, **final})
    (run_dir / "eval.json").write_text(json.dumps(final, indent=2) + "\n")
    ckpt.atomic_save(
        {"model": model.state_dict(), "model_config": _model_dict(mcfg), "step": step},
        run_dir / "checkpoints" / "final.pt",
    )
    try:
        from clipforge.train.plots import plot_curve

        plot_curve(run_dir / "metrics.jsonl", run_dir / "curve.png")
    except Exception as e:  # a plot must never fail a finished run
        print(f"warning: could not plot the training curve: {e}", file=sys.stderr)
    distributed.barrier(world)
    return run_dir


def _to(part: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return part
    return replace(
        part,
        images=part.images.to(device),
        tokens=part.tokens.to(device),
        weights=part.weights.to(device),
        owner=None if part.owner is None else part.owner.to(device),
        extra={k: v.to(device) for k, v in part.extra.items()},
    )


def _init_weights_from(model: CLIP, path: str) -> None:
    """Copy the weights of ``path`` (a run folder or any checkpoint clipforge reads) into ``model``.

    The architecture must match; the logit scale/bias come along, so a fine-tune
    continues at the temperature the source run ended with.
    """
    from clipforge.losses.towers import load_frozen

    src = load_frozen(path, "--init")
    mine, theirs = model.state_dict(), src.state_dict()
    bad = sorted(k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape)
    if bad:
        raise ClipforgeError(
            f"--init {path}: its architecture differs from the run's model "
            f"({len(bad)} tensors, e.g. {bad[0]}); pass the matching --model/--model-args"
        )
    model.load_state_dict({k: theirs[k] for k in mine})


def _model_dict(mcfg: ModelConfig) -> dict[str, Any]:
    d = to_dict(mcfg)
    return json.loads(json.dumps(d))  # tuples -> lists, for YAML and weights_only pickles


def load_model(path: str | Path) -> CLIP:
    """A trained model from a run folder (its final or last checkpoint) or a checkpoint file."""
    p = ckpt.run_checkpoint(path)
    state = ckpt.load(p)
    if "model" not in state or "model_config" not in state:
        raise ClipforgeError(f"{p} is not a clipforge checkpoint (no model/model_config)")
    mcfg = ModelConfig.from_dict(state["model_config"])
    sd = state["model"]
    bias = sd.get("logit_bias")
    model = CLIP(mcfg, init_logit_bias=0.0 if bias is not None else None)
    model.load_state_dict(sd)
    model.eval()
    return model


__all__ = ["TrainConfig", "load_model", "train"]
