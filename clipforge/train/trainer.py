"""The training loop. It reads as the algorithm: build, restore, step, log, evaluate, save.

The pieces live beside it: :mod:`~clipforge.train.builders` turns the config into data,
objective and model config (checking every option once, before anything is written),
:mod:`~clipforge.train.run_folder` owns the files, :mod:`~clipforge.train.step` one
optimizer step, :mod:`~clipforge.train.checkpoint` the training state.

Resume (``--resume RUN_DIR``) reloads ``last.pt`` and replays nothing: the data stream
restarts at the saved sample position and every sample's augmentation is seeded by its
position, so the resumed run reaches the same weights as an uninterrupted one. What a
resume may change (``--steps``) is :mod:`~clipforge.train.resume`; a complete run is
left as it is.

Under ``torchrun`` (``python -m clipforge.train`` with the flags of ``clipforge train``)
every process runs :func:`train`; rank 0 alone writes the run folder. How the batch and
the loss are shared is in :mod:`clipforge.train.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipforge.checkpoint import atomic_save, heads_payload, model_payload
from clipforge.data.loader import iter_batches
from clipforge.errors import ClipforgeError
from clipforge.eval.suite import evaluate, flat_metrics
from clipforge.models import CLIP, load
from clipforge.models.loading import differing_tensors, same_head
from clipforge.models.lora import save_adapters
from clipforge.train import checkpoint as train_state
from clipforge.train import distributed, finetune, fsdp
from clipforge.train import resume as resume_rule
from clipforge.train.builders import RunParts, build
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World
from clipforge.train.ema import WeightEMA
from clipforge.train.optim import build_optimizer, cosine_lr
from clipforge.train.run_folder import RunFolder
from clipforge.train.step import Stepper, norm


@dataclass
class TrainResult(os.PathLike):
    """What a finished run reports; path-like, standing for its run folder."""

    run_dir: Path
    step: int
    samples: int  # stream positions read by all processes, skipped ones included
    skipped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # final held-out evaluation
    complete: bool = False  # a resume found the run finished and wrote nothing

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __str__(self) -> str:
        return str(self.run_dir)

    def __truediv__(self, other: str) -> Path:
        return self.run_dir / other

    def skip_summary(self) -> str:
        """One line per skip reason, most frequent first."""
        return skip_summary(self.skipped, self.samples)


def train(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    changes: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a model as ``cfg`` says; the result stands for the run folder.

    A new run needs a new or empty ``cfg.out``; ``overwrite`` lets it replace an earlier
    run there (see :mod:`clipforge.outputs`). With ``resume``, the run continues from
    ``RUN_DIR/checkpoints/last.pt`` with its saved config; of ``cfg`` only ``progress``
    and ``dist_backend`` are used. ``changes`` are the fields given for the resume (the
    command line's flags): ``steps`` moves the end of the run, a field equal to the saved
    value is fine, any other is refused (:mod:`~clipforge.train.resume`). A run that is
    already complete is left untouched and reported with ``complete=True``. Started by
    torchrun, this process joins the process group for the run and leaves it afterwards.
    """
    if resume is not None and overwrite:
        raise ClipforgeError("--overwrite starts a new run; it cannot be used with --resume")
    world = distributed.setup(cfg.dist_backend)
    try:
        return _train(cfg, resume, changes or {}, world, overwrite)
    except BaseException as exc:
        if world.owns_group:
            # The raised run's frames still hold its model while the exception is in
            # flight; cleared, teardown's collection frees the model while the group it
            # may hold work on is alive (distributed.teardown). The traceback keeps its
            # files and lines, only the frames' locals go.
            link: BaseException | None = exc
            while link is not None:  # and those of the exceptions it was raised from
                traceback.clear_frames(link.__traceback__)
                link = link.__cause__ or link.__context__
        raise
    finally:
        distributed.teardown(world)


def _train(
    cfg: TrainConfig,
    resume: str | Path | None,
    changes: Mapping[str, Any],
    world: World,
    overwrite: bool,
) -> TrainResult:
    if resume is not None:
        folder, cfg, state = RunFolder.resume(resume, cfg, world, changes)
        if folder.is_complete(cfg, state):
            return _completed(folder, state)
    else:
        folder, state = RunFolder.new(cfg, world, overwrite), None
    parts = build(cfg, world, state)
    torch.set_num_threads(cfg.threads)
    # The resolved precision is what the saved config says, so a resumed run keeps it on
    # any machine.
    cfg = replace(cfg, precision=parts.precision.name)

    torch.manual_seed(cfg.seed)
    model = CLIP(parts.model_config, parts.loss.init_logit_scale, parts.loss.init_logit_bias)
    model.tokenizer_spec = parts.tokenizer_spec  # --init's (or the resumed run's) tokenizer
    init_heads = _init_weights_from(model, cfg.init) if cfg.init and state is None else {}
    trainable = finetune.configure(model, cfg)  # locks, LoRA, patch dropout
    # On its device (and in its dtype) before the optimizer exists, so restored optimizer
    # state lands there too.
    model.to(world.device, torch.float64 if cfg.precision == "fp64" else None)
    objective = parts.objective.to(world.device)
    _init_heads_from(objective.heads(), init_heads, str(cfg.init), world)
    objective.attach(model)  # after --init: an EMA teacher starts from the loaded weights
    _check_tokenizers(model, objective, str(cfg.init))
    if cfg.fsdp:
        fsdp.shard(model, world)  # before the optimizer, which then holds only the shards
    # Heads the objective trains (a caption decoder) travel with the model, as a loaded
    # checkpoint's do, so evaluations during the run (captioning) can use them.
    model.heads.update(objective.heads())
    # An objective may own parameters (a third-modality encoder): they train with the model.
    trained = torch.nn.ModuleList([model, objective])
    opt = build_optimizer(
        trained, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, cfg.lr_layer_decay
    )

    # `positions[r]` is where rank r's stream continues; their sum counts the samples read
    # by all ranks (skipped ones included).
    step, positions, skipped = 0, [0] * world.size, {}
    ema = WeightEMA(model, cfg.ema_decay, objective.heads()) if cfg.ema_decay > 0 else None
    if state is not None:
        _restore(state, folder.path, model, objective, opt, trained if cfg.fsdp else None)
        if ema is not None:
            ema.load(state["ema"])
        step, skipped = int(state["step"]), dict(state["skipped"])
        positions = distributed.saved_positions(state, world, folder.path)
        train_state.set_rng_state(state["rng"])
        saved_steps = folder.saved.steps if folder.saved is not None else cfg.steps
        notice = resume_rule.schedule_notice(folder.path, saved_steps, cfg, step)
        if notice and world.is_main:
            print(notice, file=sys.stderr)
    # Only now, with every option, weight file and checkpoint read, is anything written.
    fresh = state is None
    cfg = folder.create(cfg, parts.model_config, fresh, parts.precision.to_dict())
    if world.is_main and fresh:
        print(f"precision {parts.precision.name} ({parts.precision.reason})", flush=True)
        if trainable.trainable < trainable.total:
            print(trainable.describe(), flush=True)
    # DDP broadcasts rank 0's weights; every rank built and loaded the same ones anyway.
    # FSDP wraps the model in place: it is its own "wrapped" model.
    wrapped = model if cfg.fsdp else distributed.wrap_model(model, world)
    if cfg.compile:
        # Only the training forward: evaluation and checkpoints use the plain module, so
        # parameter names and saved files are those of an eager run.
        wrapped = torch.compile(wrapped)
    stepper = Stepper(cfg, world, model, wrapped, objective, opt)
    log = folder.log(step if state is not None else None, cfg.log == "tensorboard")

    def run_eval(split: str, state: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        # A sharded model is evaluated as an unsharded copy of its gathered ``state``.
        net = model if state is None else _unsharded(state, parts, cfg, world)
        return _evaluate(net, parts, cfg, split)

    model.train()
    loader = iter_batches(
        parts.source, parts.processor, parts.collate, cfg.batch_size // world.size,
        start=positions[world.rank], workers=cfg.workers, rank=world.rank,
        world_size=world.size,
    )  # fmt: skip
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and world.is_main),
               desc="train", dynamic_ncols=True)  # fmt: skip
    t_last, n_since = time.perf_counter(), 0
    # Closed however the loop ends (Ctrl-C, a refused skip rate), so the data workers end
    # then, not whenever the garbage collector reaches the generator.
    with contextlib.closing(loader) as batches:
        while step < cfg.steps:
            batch = next(batches)
            lr = cfg.lr * cosine_lr(step, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # layer-wise decay's factor
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            before = [p.detach().clone() for p in model.parameters()] if log_now else []
            stats = stepper(batch, step)
            if ema is not None:
                ema.update(model)
            step += 1
            # Every rank keeps the totals of all ranks, so all take the same decisions below.
            positions, step_skipped = distributed.stream_state(
                batch.next_position, batch.skipped, world
            )
            for reason, n in step_skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
            _check_skip_rate(cfg, sum(positions), skipped)
            n_since += cfg.batch_size
            bar.update(1)
            if log_now:
                now = time.perf_counter()
                rec = {
                    "step": step, "loss": stats.loss, "lr": lr,
                    "logit_scale": float(model.logit_scale_exp().detach()),
                    "grad_norm": stats.grad_norm, "param_norm": norm(model.parameters()),
                    "update_norm": norm(p - b for p, b in zip(model.parameters(), before, strict=True)),
                    "samples": sum(positions), "skipped": sum(skipped.values()),
                    "samples_per_s": n_since / max(now - t_last, 1e-9),
                }  # fmt: skip
                if model.logit_bias is not None:
                    rec["logit_bias"] = float(model.logit_bias.detach())
                if stats.aux is not None:
                    rec["moe_aux_loss"] = stats.aux
                rec.update(objective.metrics())
                if log is not None:
                    log.write(rec)
                bar.set_postfix(loss=f"{stats.loss:.3f}", skipped=rec["skipped"])
                t_last, n_since = now, 0
            eval_now = cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps
            if eval_now and parts.evals:
                gathered = fsdp.full_model_state(model) if cfg.fsdp else None  # every rank
                if log is not None:
                    log.write({"step": step, "split": "val", **run_eval("val", gathered)})
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                full = (
                    (fsdp.full_model_state(model), fsdp.full_optimizer_state(trained, opt))
                    if cfg.fsdp
                    else None
                )  # gathered by every rank, written by rank 0
                saved = train_state.training_state(
                    model, parts.model_config, opt, objective, step, positions, skipped, full
                )
                if ema is not None:
                    saved["ema"] = ema.state
                folder.save_last(saved)
    bar.close()
    result = TrainResult(folder.path, step, sum(positions), skipped)
    gathered = fsdp.full_model_state(model) if cfg.fsdp else None  # every rank takes part
    if log is None:
        distributed.barrier(world)  # until rank 0 has written the run folder
        return result

    # `samples` is the number of stream positions read, skipped ones included, so the
    # skip rate is skipped / samples.
    final: dict[str, Any] = {"step": step, "samples": result.samples, "skipped": skipped}
    if parts.evals:
        result.metrics = run_eval("test", gathered)
        final.update({"split": "test", **result.metrics})
    log.write({"step": step, "final": True, **final})
    if ema is not None:  # before final.pt, which is written last
        atomic_save({**model_payload(ema.model_state(), parts.model_config, parts.tokenizer_spec),
                     **heads_payload(objective.heads(), ema.head_states()), "step": step},
                    folder.path / "checkpoints" / "ema.pt")  # fmt: skip
    if cfg.lora_rank:
        # final.pt holds them too (loading merges them); this file is the adapters alone.
        # Before final.pt, which is written last: a finished run has both.
        save_adapters(model, folder.path / "adapters.safetensors")
    weights = model.state_dict() if gathered is None else gathered
    folder.finish(final, {**model_payload(weights, parts.model_config, parts.tokenizer_spec),
                          **heads_payload(objective.heads()), "step": step})  # fmt: skip
    distributed.barrier(world)
    return result


def _completed(folder: RunFolder, state: dict[str, Any] | None) -> TrainResult:
    """The result of a resume that found its run finished; the folder is not touched."""
    assert state is not None  # is_complete needs a checkpoint
    final = json.loads(folder.eval_json.read_text()) if folder.eval_json.is_file() else {}
    metrics = {k: v for k, v in final.items() if isinstance(v, float)}
    return TrainResult(
        folder.path, int(state["step"]), int(state["position"]), dict(state["skipped"]),
        metrics, complete=True,
    )  # fmt: skip


def _restore(
    state: dict[str, Any],
    run: Path,
    model: CLIP,
    objective: torch.nn.Module,
    opt: Any,
    sharded: torch.nn.Module | None = None,
) -> None:
    """Load ``last.pt``'s model, objective and optimizer state, refusing in one line a
    checkpoint that another architecture or objective wrote. ``sharded``: the module
    the optimizer of a sharded model was built from (each rank keeps its shards)."""
    bad = differing_tensors(model.state_dict(), state["model"])
    if bad:
        raise ClipforgeError(
            f"--resume {run}: checkpoints/last.pt holds another architecture than the run's "
            f"config.yaml ({len(bad)} tensors differ, e.g. {bad[0]}); it was not written by "
            "this run"
        )
    # Checkpoints from before objectives had state hold none; the objective starts fresh.
    saved_objective = state.get("objective")
    bad = (
        []
        if saved_objective is None
        else differing_tensors(objective.state_dict(), saved_objective)
    )
    if bad:
        raise ClipforgeError(
            f"--resume {run}: checkpoints/last.pt holds the state of another objective than "
            f"the run's --loss ({len(bad)} tensors differ, e.g. {bad[0]})"
        )
    if saved_objective is not None:
        objective.load_state_dict(saved_objective)
    if sharded is not None:
        fsdp.load_states(model, sharded, opt, state["model"], state["optimizer"])
        return
    model.load_state_dict(state["model"])
    try:
        opt.load_state_dict(state["optimizer"])
    except ValueError as e:  # parameter groups of another size
        raise ClipforgeError(f"--resume {run}: checkpoints/last.pt: {e}") from None


def _unsharded(
    state: dict[str, torch.Tensor], parts: RunParts, cfg: TrainConfig, world: World
) -> CLIP:
    """A plain model holding a sharded model's gathered ``state``, for rank 0's evaluation."""
    with torch.random.fork_rng(devices=[]):  # building it must not move the run's RNG
        net = CLIP(parts.model_config, parts.loss.init_logit_scale, parts.loss.init_logit_bias)
    net.to(world.device, torch.float64 if cfg.precision == "fp64" else None)
    net.load_state_dict(state)
    return net


def _evaluate(model: CLIP, parts: RunParts, cfg: TrainConfig, split: str) -> dict[str, float]:
    """The run's eval tasks on the shapes world's ``split``, in memory."""
    # A bf16 run is evaluated in bf16 as well, so its numbers describe the model it trains.
    results = evaluate(
        model, parts.tokenizer, parts.evals, split=split, per_class=cfg.eval_per_class,
        scenes=cfg.eval_pairs, precision="bf16" if cfg.precision == "bf16" else "fp32",
    )  # fmt: skip
    return flat_metrics(results)


def _check_skip_rate(cfg: TrainConfig, position: int, skipped: dict[str, int]) -> None:
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


def _init_weights_from(model: CLIP, path: str) -> dict[str, torch.nn.Module]:
    """Copy the weights of ``path`` (a run folder or any checkpoint clipforge reads) into
    ``model``; returns the heads the checkpoint carries (a caption decoder), by name.

    The architecture must match; the logit scale/bias come along, so a fine-tune
    continues at the temperature the source run ended with.
    """
    loaded = load(path, what="--init")
    if loaded.tokenizer_spec != model.tokenizer_spec:  # build() took it from the same path
        raise ClipforgeError(f"--init {path}: its tokenizer changed while the run started")
    mine, theirs = model.state_dict(), loaded.state_dict()
    bad = differing_tensors(mine, theirs, extra_ok=True)
    if bad:
        raise ClipforgeError(
            f"--init {path}: its architecture differs from the run's model "
            f"({len(bad)} tensors, e.g. {bad[0]}); pass the matching --model/--model-args"
        )
    model.load_state_dict({k: theirs[k] for k in mine})
    return dict(loaded.heads)


def _check_tokenizers(model: CLIP, objective: torch.nn.Module, init: str) -> None:
    """Refuse what would feed a model ids of another vocabulary: a frozen teacher or
    reference model (distillation, ALIP, CWCL: they read the student's token rows) that
    tokenizes otherwise, or a caption decoder (trained on CLIP's BPE ids, with a start
    token) beside a model with its own tokenizer."""
    spec = model.tokenizer_spec
    for name, m in objective.named_modules():
        if isinstance(m, CLIP) and m.tokenizer_spec != spec:
            theirs = m.tokenizer_spec.describe() if m.tokenizer_spec else "CLIP's BPE"
            ours = spec.describe() if spec else "CLIP's BPE"
            raise ClipforgeError(
                f"the loss's {name or 'model'} tokenizes with {theirs} and the run's model "
                f"with {ours}: it would read ids of another vocabulary"
            )
    if spec is not None and objective.heads():
        raise ClipforgeError(
            f"--init {init} tokenizes with its {spec.describe()}; caption decoders "
            f"({', '.join(sorted(objective.heads()))}) train on CLIP's BPE only"
        )


def _init_heads_from(
    mine: Mapping[str, torch.nn.Module],
    theirs: Mapping[str, torch.nn.Module],
    path: str,
    world: World,
) -> None:
    """Start the run's heads (``mine``, the objective's) from the ``--init`` checkpoint's
    (``theirs``) of the same name, which must match them; a head the run does not train
    is left out, and said so."""
    for name, head in theirs.items():
        if name not in mine:
            if world.is_main:
                print(f"--init {path}: its {name} head is not trained by this run's --loss and "
                      "is left out of its checkpoints (keep it with --loss clip+coca)",
                      file=sys.stderr)  # fmt: skip
            continue
        if not same_head(mine[name], head):
            raise ClipforgeError(
                f"--init {path}: its {name} ({getattr(head, 'cfg', None)}) differs from this "
                f"run's ({getattr(mine[name], 'cfg', None)}); set the objective's options "
                "(--coca-*) to match it"
            )
        mine[name].load_state_dict(head.state_dict())


__all__ = ["TrainConfig", "TrainResult", "train"]
