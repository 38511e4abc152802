"""One optimizer step: the loss of each micro-batch, accumulation, the gradient norm.

How the batch and the loss are shared between processes is in
:mod:`clipforge.train.distributed`; this module only calls it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from clipforge.data.batches import Batch
from clipforge.errors import ClipforgeError
from clipforge.losses import Features
from clipforge.losses.base import NEGATIVE_OF, Objective
from clipforge.models import moe
from clipforge.models.external_text import TEXT_EMBEDDING
from clipforge.train import distributed, fsdp
from clipforge.train.collectives import gather_features
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World
from clipforge.train.siglip_ring import siglip_ring_share


def batch_loss(
    model: nn.Module,
    objective: nn.Module,
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
    tokens = getattr(objective, "needs_tokens", False)
    # A model with an external text tower reads the captions' stored embeddings.
    # Region phrases (region-text objectives) go through the text tower in the same pass
    # as the captions, after them, so they train it as the captions do.
    texts, n_captions = part.extra.get(TEXT_EMBEDDING, part.tokens), part.tokens.shape[0]
    phrases = part.extra.get("region_tokens")
    if phrases is not None:
        valid = part.extra["region_mask"].flatten() > 0
        texts = torch.cat([texts, phrases.flatten(0, 1)[valid]])
    out = model(part.images, texts, with_tokens=True) if tokens else model(part.images, texts)

    # The loss runs in float32 under bf16 autocast; a float64 model (the exactness tests)
    # keeps float64.
    def loss_dtype(x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.float64 else x.float()

    image, text = loss_dtype(out.image), loss_dtype(out.text[:n_captions])
    if phrases is not None:
        found = loss_dtype(out.text[n_captions:])
        region_text = found.new_zeros(valid.shape[0], found.shape[1])
        region_text[valid] = found
        extra["region_text"] = region_text.view(*phrases.shape[:2], -1)
    if tokens:
        extra["image_tokens"] = loss_dtype(out.image_tokens)
        extra["text_tokens"] = loss_dtype(out.text_tokens[:n_captions])
        # As numbers, not bools: the distributed gather moves floating-point rows.
        extra["text_token_mask"] = out.text_mask[:n_captions].to(text.dtype)
    if getattr(objective, "needs_negative_rows", False):
        extra[NEGATIVE_OF] = negative_rows(part)
    f = Features(image, text, out.scale, out.bias, part.owner, part.weights, extra)
    if chunked:
        share = siglip_ring_share(f, world)
    elif local:
        share = objective(gather_features(f, world, local=True))
    else:
        loss = objective(gather_features(f, world))
        return loss, loss.detach()
    return share * world.size, distributed.all_sum(share, world)


def negative_rows(part: Batch) -> torch.Tensor:
    """``[T]``: the image row each hard-negative caption of ``part`` was made from, -1 for
    its positive captions (the collator records every text's sample in ``text_row``)."""
    if part.owner is None or part.text_row is None:
        return torch.full((part.tokens.shape[0],), -1, dtype=torch.long, device=part.tokens.device)
    return torch.where(part.owner < 0, part.text_row, -1)


def norm(tensors: Iterator[torch.Tensor]) -> float:
    """The L2 norm of several tensors together (sharded ones over all their shards)."""
    return float(torch.sqrt(sum(fsdp.full_value((t.detach().float() ** 2).sum()) for t in tensors)))


@dataclass
class StepResult:
    loss: float  # the whole batch's loss, the same on every rank
    grad_norm: float  # before clipping
    aux: float | None = None  # a mixture-of-experts model's balancing loss (this rank's)


class Stepper:
    """Runs optimizer steps of ``model`` (wrapped as ``ddp``) and the objective's parameters."""

    def __init__(
        self,
        cfg: TrainConfig,
        world: World,
        model: nn.Module,
        ddp: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.cfg, self.world = cfg, world
        self.model, self.ddp, self.objective, self.optimizer = model, ddp, objective, optimizer
        self.trained = nn.ModuleList([model, objective])
        self.micro = cfg.batch_size // world.size // cfg.accum_steps
        self.amp = cfg.precision == "bf16"

    def __call__(self, batch: Batch, step: int) -> StepResult:
        """One step on this rank's rows ``batch``; ``step`` (0-based) names it in errors."""
        cfg, world = self.cfg, self.world
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.accum_exact:
            return self._finish(self._cached(batch, step))
        loss_sum, aux_sum = 0.0, None
        for k in range(cfg.accum_steps):
            part = _to(batch.rows(slice(k * self.micro, (k + 1) * self.micro)), world.device)
            # DDP averages gradients once per step, on the last micro-batch's backward.
            last = k + 1 == cfg.accum_steps
            with contextlib.nullcontext() if last else distributed.no_sync(self.ddp):
                with torch.autocast(world.device.type, torch.bfloat16, enabled=self.amp):
                    loss, logged = batch_loss(
                        self.ddp, self.objective, part, world, cfg.local_loss, cfg.siglip_chunked
                    )
                    aux = moe.aux_loss(self.model)  # routers' balance, of this forward
                    if aux is not None:
                        loss = loss + cfg.moe_aux_weight * aux
                        aux_sum = (aux_sum or 0.0) + float(aux.detach()) / cfg.accum_steps
                if not torch.isfinite(logged):
                    raise ClipforgeError(
                        f"loss became {float(logged)} at step {step + 1}; lower --lr"
                    )
                (loss / cfg.accum_steps).backward()
            loss_sum += float(logged) / cfg.accum_steps
        result = self._finish(loss_sum)
        result.aux = aux_sum
        return result

    def _finish(self, loss: float) -> StepResult:
        cfg = self.cfg
        # DDP holds only the model; an objective's own parameters are averaged here.
        distributed.average_gradients(self.objective.parameters(), self.world)
        if cfg.fsdp:
            fsdp.average_replicated(self.model, self.world)
            grad_norm = fsdp.clip_grad_norm(list(self.trained.parameters()), cfg.grad_clip)
        else:
            params = self.trained.parameters()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                if cfg.grad_clip > 0
                else norm(p.grad for p in params if p.grad is not None)
            )
        self.optimizer.step()
        self.objective.after_step(self.model)
        return StepResult(loss, grad_norm)

    def _cached(self, batch: Batch, step: int) -> float:
        """Gradient caching (Gao et al., 2021): the full-batch loss, built in micro-batches.

        Pass 1 embeds every micro-batch without a graph. The loss of the whole batch is
        taken on those embeddings as leaves, and its backward leaves ``dL/d embedding``
        on them (and the temperature's gradient on the model). Pass 2 runs each
        micro-batch again with a graph and back-propagates ``<embedding, dL/d embedding>``,
        whose gradient is that micro-batch's exact share of the chain rule. Only one
        micro-batch's activations are held at a time; the logits are those of the full
        batch. The second pass replays the first one's random draws (patch dropout), and
        the first pass's batch-norm statistics updates are undone, so the running
        statistics move as with plain accumulation.
        """
        cfg, world, model = self.cfg, self.world, self.model
        k = cfg.accum_steps
        parts = [_to(batch.rows(slice(i * self.micro, (i + 1) * self.micro)), world.device)
                 for i in range(k)]  # fmt: skip
        # A token-level objective (FILIP) reads per-token features too: they are cached
        # and differentiated like the pooled embeddings.
        tokens = getattr(self.objective, "needs_tokens", False)
        buffers = [b.detach().clone() for b in model.buffers()]
        rng: list[torch.Tensor] = []
        cached: list[list[torch.Tensor]] = [[], [], [], []]  # image, text, image/text tokens
        masks: list[torch.Tensor] = []
        with torch.no_grad(), torch.autocast(world.device.type, torch.bfloat16, enabled=self.amp):
            for part in parts:
                rng.append(torch.get_rng_state())
                out = model(part.images, part.tokens, with_tokens=tokens)
                cached[0].append(out.image)
                cached[1].append(out.text)
                if tokens:
                    cached[2].append(out.image_tokens)
                    cached[3].append(out.text_tokens)
                    masks.append(out.text_mask)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        keep = (lambda x: x) if cached[0][0].dtype == torch.float64 else (lambda x: x.float())
        leaves = [keep(torch.cat(c)).requires_grad_() if c else None for c in cached]
        image, text, image_tokens, text_tokens = leaves
        extra: dict[str, torch.Tensor] = {}
        if tokens:
            assert image_tokens is not None and text_tokens is not None
            # As batch_loss puts them, the mask as numbers.
            extra = {"image_tokens": image_tokens, "text_tokens": text_tokens,
                     "text_token_mask": torch.cat(masks).to(text.dtype)}  # fmt: skip
        with torch.autocast(world.device.type, torch.bfloat16, enabled=self.amp):
            f = Features(image, text, model.logit_scale_exp(), model.logit_bias,
                         _owners(parts), torch.cat([p.weights for p in parts]), extra)  # fmt: skip
            loss = self.objective(f)
        if not torch.isfinite(loss):
            raise ClipforgeError(f"loss became {float(loss)} at step {step + 1}; lower --lr")
        loss.backward()
        rows = [p.images.shape[0] for p in parts], [p.tokens.shape[0] for p in parts]
        grads = [
            None if x is None or x.grad is None else x.grad.split(rows[i % 2])
            for i, x in enumerate(leaves)
        ]
        assert grads[0] is not None and grads[1] is not None
        for i, part in enumerate(parts):
            torch.set_rng_state(rng[i])
            with contextlib.nullcontext() if i + 1 == k else distributed.no_sync(self.ddp):
                with torch.autocast(world.device.type, torch.bfloat16, enabled=self.amp):
                    out = self.ddp(part.images, part.tokens, with_tokens=tokens)
                outs = (out.image, out.text, out.image_tokens, out.text_tokens)
                # <output, dL/d output> over every cached output: its gradient is this
                # micro-batch's exact share of the chain rule.
                surrogate = sum(
                    (o * g[i].to(o.dtype)).sum()
                    for o, g in zip(outs, grads, strict=True)
                    if g is not None and o is not None
                )
                assert isinstance(surrogate, torch.Tensor)
                surrogate.backward()
        return float(loss.detach())


def check_cacheable(cfg: TrainConfig, objective: Objective, world: World) -> None:
    """Refuse ``--accum-exact`` in one line where gradient caching cannot be exact."""
    if cfg.accum_steps < 2:
        raise ClipforgeError("--accum-exact needs --accum-steps of 2 or more")
    if world.size > 1:
        raise ClipforgeError(
            "--accum-exact runs in one process (under torchrun the gathered batch already "
            "gives full-batch gradients)"
        )
    terms = list(getattr(objective, "terms", [objective]))
    for term in terms:
        reads_more = (
            term.batch_keys
            or term.regions
            or term.needs_negative_rows
            or type(term).prepare is not Objective.prepare
        )
        if reads_more or any(p.requires_grad for p in term.parameters()):
            raise ClipforgeError(
                f"--accum-exact needs an objective of the embeddings alone; --loss {cfg.loss!r} "
                "also reads the raw batch or trains its own parameters"
            )


def _owners(parts: list[Batch]) -> torch.Tensor | None:
    """The owner map of the micro-batches' texts laid end to end, rows offset to the batch."""
    if all(p.owner is None for p in parts):
        return None
    out, start = [], 0
    for p in parts:
        own = (
            torch.arange(p.images.shape[0], device=p.images.device) if p.owner is None else p.owner
        )
        out.append(torch.where(own >= 0, own + start, own))
        start += p.images.shape[0]
    return torch.cat(out)


def _to(part: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return part

    def move(t: torch.Tensor) -> torch.Tensor:
        # A pinned host copy lets the transfer overlap the previous step's kernels.
        return t.pin_memory().to(device, non_blocking=True)

    return replace(
        part,
        images=move(part.images),
        tokens=move(part.tokens),
        weights=move(part.weights),
        owner=None if part.owner is None else move(part.owner),
        extra={k: move(v) for k, v in part.extra.items()},
    )
