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

import torch
from torch import nn


@dataclass
class Features:
    """The inputs of an objective.

    ``extra`` holds any further tensors an objective needs (teacher or reference
    embeddings, a third modality). Keys starting with ``text_`` have ``T`` rows, every
    other key ``B`` rows; the distributed gather relies on that convention.
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

    ``computes_shares``: the objective honours ``Features.rows``, returning the sum of the
    terms of those image rows (and of their captions) divided by the normalisers of the
    whole batch, so that the shares of all processes add up to the plain loss. Only such
    objectives can run with ``--local-loss``.
    """

    computes_shares: bool = False

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, f: Features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values``, weighted by ``weights`` (normalised to sum 1) when given."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


__all__ = ["Features", "Objective", "weighted_mean"]
