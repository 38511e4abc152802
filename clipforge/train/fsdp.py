"""Fully sharded data parallelism (``--fsdp true`` under ``torchrun``), by PyTorch's FSDP2.

:func:`shard` applies :func:`torch.distributed.fsdp.fully_shard` to every transformer
block of both towers and then to the whole model (embeddings, stems, norms and heads):
each of the ``N`` ranks keeps ``1/N`` of every parameter, of its gradient and of the
optimizer state, and gathers a block's full weights only while it runs. The batch, the
gathered loss and its gradient are those of DDP (:mod:`clipforge.train.distributed`):
FSDP's reduce-scatter averages the gradients over the ranks as DDP's all-reduce does,
so the two compute the same steps up to the order of float additions.

FSDP2 cannot shard 0-dimensional parameters, so the temperature and the logit bias stay
whole on every rank (:func:`replicated`); their gradients are averaged here
(:func:`average_replicated`), as DDP would.

Checkpoints hold full tensors: every rank takes part in gathering them
(:func:`full_model_state`, :func:`full_optimizer_state`) and rank 0 writes them, so a
run's ``final.pt`` and ``last.pt`` load without FSDP (``clipforge.models.load``). A
resumed run hands every rank the full state and each keeps its shard
(:func:`load_states`): the shards are the saved numbers, so the resume is bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from clipforge.errors import ClipforgeError
from clipforge.losses.base import Objective
from clipforge.losses.towers import TeacherTower
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World

# Gathered on rank 0 only and moved to the CPU there: the other ranks get empty dicts.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check(cfg: TrainConfig, world: World, objective: Objective) -> None:
    """Refuse, in one line, ``--fsdp`` where it cannot run or is not supported."""
    if not cfg.fsdp:
        return
    if world.size < 2:
        raise ClipforgeError(
            "--fsdp shards the model over processes: start it under torchrun with "
            "--nproc_per_node 2 or more"
        )
    refused = [
        (cfg.ema_decay > 0, "--ema-decay (the average would need the full weights every step)"),
        (cfg.lora_rank > 0, "--lora-rank (adapters are small: use plain data parallelism)"),
        (cfg.accum_exact, "--accum-exact"),
        (cfg.compile, "--compile"),
        (
            cfg.lock_image or cfg.lock_text or cfg.freeze_norms,
            "--lock-image/--lock-text/--freeze-norms",
        ),
    ]
    for bad, flag in refused:
        if bad:
            raise ClipforgeError(f"--fsdp cannot be combined with {flag}")
    for term in getattr(objective, "terms", [objective]):
        if isinstance(term, TeacherTower) and term.mode == "ema":
            raise ClipforgeError(
                f"--fsdp cannot keep the EMA teacher of --loss {cfg.loss!r} (it copies the "
                "sharded student); use a frozen teacher or drop --fsdp"
            )
        if any(p.requires_grad for p in term.parameters()):
            raise ClipforgeError(
                f"--fsdp shards the model only; --loss {cfg.loss!r} trains parameters of its own"
            )


def replicated(model: nn.Module) -> list[nn.Parameter]:
    """The scalar parameters (temperature, logit bias) that stay whole on every rank."""
    return [p for p in model.parameters() if p.dim() == 0]


def shard(model: nn.Module, world: World) -> nn.Module:
    """Shard ``model`` in place over the ranks of ``world``: each transformer block is
    one unit (gathered for its forward and backward, freed after), the rest one more."""
    from clipforge.train.batchnorm import globalise_batch_norms

    model.to(world.device)
    globalise_batch_norms(model, world)  # the ranks together compute the 1-process model
    for tower in (model.visual, model.text):
        for block in tower.transformer.blocks:
            fully_shard(block)
    fully_shard(model, ignored_params=set(replicated(model)))
    return model


def local_share(model: nn.Module) -> tuple[int, int]:
    """(parameter entries this rank holds, entries of the whole model)."""
    held = total = 0
    for p in model.parameters():
        held += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        total += p.numel()
    return held, total


def average_replicated(model: nn.Module, world: World) -> None:
    """Average the gradients of the unsharded parameters over the ranks (DDP's rule)."""
    for p in replicated(model):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world.size


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """The global gradient norm of sharded and replicated parameters, clipped to
    ``max_norm`` (0: measured only), as :func:`torch.nn.utils.clip_grad_norm_` does.

    A sharded gradient's squares are summed over its shards (one all-reduce); a
    replicated one, equal on every rank, counts once.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    for g in grads:
        sq = (g.detach().double() ** 2).sum()
        total = total + (sq.full_tensor() if isinstance(sq, DTensor) else sq).cpu()
    norm = float(total.sqrt())
    if max_norm > 0:
        coef = min(max_norm / (norm + 1e-6), 1.0)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return norm


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on rank 0 (CPU tensors), ``{}`` on the other ranks;
    every rank must call it."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state (keyed by parameter name) on rank 0, ``{}`` elsewhere;
    every rank must call it. ``module`` is the one the optimizer was built from."""
    return get_optimizer_state_dict(module, optimizer, options=_FULL)


def load_states(
    model: nn.Module,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Give every rank its shard of full saved states (each rank holds them all)."""
    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=whole)
    set_optimizer_state_dict(module, optimizer, optimizer_state, options=whole)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a sharded tensor gathered (a collective), any other as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


__all__ = [
    "average_replicated",
    "check",
    "clip_grad_norm",
    "full_model_state",
    "full_optimizer_state",
    "full_value",
    "load_states",
    "local_share",
    "replicated",
    "shard",
]
