"""What every objective sees: the embeddings of one batch, and how texts map to images.

A batch holds ``B`` images and ``T >= B`` texts. ``owner[j]`` is the image row that text
``j`` describes, or ``-1`` for a text that is a negative for every image (a hard-negative
caption). With one caption per image and no hard negatives ``owner`` is ``None`` and
means ``arange(B)``. Several captions of one image (``caption: all``) share an owner and
are all positives of that image.

Under data parallelism the trainer all-gathers every field (``owner`` offset to global
rows) before the objective runs, so objectives are written once, for one process. With
``--local-loss`` it also sets ``rows``, the global image rows this process owns, and an
objective that declares ``computes_shares`` returns only the share of the loss made of
those rows' terms (see :mod:`clipforge.train.distributed` for why shares, not means).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.ranges import Range

# ``Features.extra`` key: ``[T]`` long, the image row a hard-negative caption (owner -1)
# was made from, -1 for the other texts. Offset to global rows by the distributed gather,
# as ``owner`` is.
NEGATIVE_OF = "text_negative_of"


@dataclass
class Features:
    """The inputs of an objective.

    ``extra`` holds any further tensors an objective needs (teacher or reference
    embeddings, a third modality). Keys starting with ``text_`` have ``T`` rows, every
    other key ``B`` rows; the distributed gather relies on that convention. Keys in use:
    ``ref_image``/``text_ref`` (CWCL's reference), ``teacher_image``/``text_teacher`` (a
    live distillation teacher), ``teacher_image``/``teacher_text`` (stored teacher
    embeddings, one caption per image, so ``B`` rows), ``third`` (Symile's third view),
    ``image_tokens``/``text_tokens``/``text_token_mask`` (per-token features, for
    objectives that declare ``needs_tokens``), ``alip_image``/``text_alip`` (ALIP's
    teacher), ``text_negative_of`` (:data:`NEGATIVE_OF`, for objectives that declare
    ``needs_negative_rows``).
    """

    image: torch.Tensor  # [B, D], L2-normalised
    text: torch.Tensor  # [T, D], L2-normalised
    scale: torch.Tensor  # exp(logit_scale), a scalar
    bias: torch.Tensor | None = None
    owner: torch.Tensor | None = None  # [T] long; -1 = negative-only column
    weights: torch.Tensor | None = None  # [B] per-sample loss weights
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # Image rows whose terms this process computes; None = all of them, the plain loss.
    rows: slice | None = None

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    def owners(self) -> torch.Tensor:
        """``owner`` with the one-caption default filled in."""
        if self.owner is not None:
            return self.owner
        if self.text.shape[0] != self.image.shape[0]:
            raise ValueError(
                f"{self.image.shape[0]} images but {self.text.shape[0]} texts and no owner map"
            )
        return torch.arange(self.image.shape[0], device=self.image.device)

    def positives(self) -> torch.Tensor:
        """``[B, T]`` boolean mask of the positive pairs."""
        rows = torch.arange(self.image.shape[0], device=self.image.device)
        return self.owners()[None, :] == rows[:, None]

    def replace(self, **changes) -> Features:
        return replace(self, **changes)


class Objective(nn.Module):
    """A loss bound to its options and, where it has them, learnable parameters.

    ``forward(features)`` returns the scalar loss. ``prepare(images, tokens)`` runs before
    the gather and returns extra tensors computed from the raw batch (a frozen teacher's
    embeddings, say); it must not need gradients.

    The trainer also calls ``attach(model)`` once, after building the model and before
    building the optimizer and restoring a checkpoint (an EMA teacher copies the student
    there), and ``after_step(model)`` after every optimizer step. Parameters of the
    objective that require gradients are trained with the model, and the objective's
    ``state_dict`` (parameters, buffers, teachers) is saved in the checkpoint.
    ``batch_keys`` names ``Sample.meta`` fields the data pipeline must carry into
    ``Features.extra`` (stored teacher embeddings, a third modality), one row per image.
    ``computes_shares``: the objective honours ``Features.rows``, returning the sum of the
    terms of those image rows (and of their captions) divided by the normalisers of the
    whole batch, so that the shares of all processes add up to the plain loss. Only such
    objectives can run with ``--local-loss``. ``ring_chunkable``: the objective is the
    plain sigmoid loss, which ``--siglip-chunked`` computes by passing texts round a ring.
    ``needs_tokens``: the trainer runs the model with ``with_tokens=True`` and puts the
    per-token features in ``Features.extra`` as ``image_tokens`` ``[B, N, D]``,
    ``text_tokens`` ``[T, L, D]`` and ``text_token_mask`` ``[T, L]`` (late interaction).
    ``regions`` > 0: the data pipeline carries up to that many object boxes and phrases
    per image (:class:`~clipforge.data.batches.Collator`), the trainer encodes the phrases
    with the text tower in the captions' pass, and ``Features.extra`` holds
    ``region_boxes`` ``[B, K, 4]`` (crop coordinates in ``[0, 1]``), ``region_mask``
    ``[B, K]`` and ``region_text`` ``[B, K, D]`` (normalised phrase embeddings).
    ``needs_negative_rows``: the trainer puts :data:`NEGATIVE_OF` in ``Features.extra``,
    so a hard-negative caption can be contrasted with the image it was made from alone.
    """

    batch_keys: tuple[str, ...] = ()
    regions: int = 0
    computes_shares: bool = False
    ring_chunkable: bool = False
    needs_tokens: bool = False
    needs_negative_rows: bool = False

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def attach(self, model: nn.Module) -> None:
        """Called once with the student model before training starts or resumes."""

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (EMA updates, per-step counters)."""

    def metrics(self) -> dict[str, float]:
        """Named values of the last ``forward`` worth logging (e.g. the terms of a sum)."""
        return {}

    def heads(self) -> dict[str, nn.Module]:
        """Modules this objective trains that belong to the model it produces (a caption
        decoder), by name: every checkpoint carries them and :func:`clipforge.models.load`
        gives them back in ``model.heads``. Each has a ``cfg`` dataclass."""
        return {}

    def forward(self, f: Features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class StepSeeded(Objective):
    """An objective that draws fresh randomness every optimizer step, reproducibly.

    The step counter is a buffer, so it is checkpointed with the objective: a resumed run
    draws the same numbers at the same step as an uninterrupted one. Every micro-batch of
    a step (and every rank, which sees the same step) gets the same draw.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))

    def after_step(self, model: nn.Module) -> None:
        self.step += 1


def reject_hard_negatives(f: Features | Any, loss: str, why: str) -> None:
    """Raise a one-line error if hard-negative captions are on: asked for by a run config
    (its ``hard_negatives`` field, checked when the objective is built) or present in a
    batch (``owner = -1``; data can bring its own negatives without the flag)."""
    if isinstance(f, Features):
        present = f.owner is not None and bool((f.owner < 0).any())
    else:
        present = bool(getattr(f, "hard_negatives", ""))
    if present:
        raise ClipforgeError(f"loss {loss!r} does not support --hard-negatives: {why}")


# Cosines differ by at most 2: a larger margin between two of them can never be met.
COSINE_MARGIN = Range(low=0, high=2)


class OwnNegativesObjective(Objective):
    """An objective that scores each hard-negative caption against the sample it was made
    from (``Features.extra[NEGATIVE_OF]``), under a ``margin``; a batch without such rows
    (no negatives, or one caption per image and no owner map) gives a zero that still
    belongs to the graph. Subclasses implement :meth:`own_negatives`."""

    needs_negative_rows = True

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, f: Features) -> torch.Tensor:
        negative_of = f.extra.get(NEGATIVE_OF)
        if negative_of is None or f.owner is None:
            return (f.image.sum() + f.text.sum()) * 0
        return self.own_negatives(f, negative_of)

    def own_negatives(self, f: Features, negative_of: torch.Tensor) -> torch.Tensor:
        """The loss of a batch that has negative rows."""
        raise NotImplementedError


def require_hard_negatives(run: Any, loss: str, does: str, example: str) -> None:
    """Raise a one-line error if a run config that says whether it has hard-negative
    captions (its ``hard_negatives`` field) has none: loss ``loss`` ``does`` something
    with each of them, and ``example`` is a value of the flag that would do."""
    if hasattr(run, "hard_negatives") and not run.hard_negatives:
        raise ClipforgeError(f"loss {loss!r} {does}: add --hard-negatives (e.g. {example})")


def first_positive(f: Features) -> torch.Tensor:
    """``[B]`` index of each image's first positive text (its caption when there is one)."""
    owner = f.owners()
    b = f.batch_size
    pos = f.positives()
    if bool((pos.sum(dim=1) == 0).any()):
        raise ValueError("every image needs at least one positive caption")
    idx = torch.arange(owner.shape[0], device=owner.device).expand(b, -1)
    return torch.where(pos, idx, owner.shape[0]).min(dim=1).values


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values``, weighted by ``weights`` (normalised to sum 1) when given."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


__all__ = [
    "COSINE_MARGIN",
    "NEGATIVE_OF",
    "Features",
    "Objective",
    "OwnNegativesObjective",
    "StepSeeded",
    "first_positive",
    "reject_hard_negatives",
    "require_hard_negatives",
    "weighted_mean",
]
