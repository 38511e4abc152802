"""Frozen CLIP towers that objectives read from: CWCL's reference, a distillation teacher."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ClipforgeError


def freeze(model: nn.Module) -> nn.Module:
    """``model`` with no trainable parameters, in eval mode (a reference or teacher tower,
    loaded with :func:`clipforge.models.load`)."""
    model.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``teacher``'s parameters ``1 - decay`` of the way to ``model``'s; copy buffers
    (an average of, say, batch-norm statistics is not a statistic of anything)."""
    for t, s in zip(teacher.parameters(), model.parameters(), strict=True):
        t.lerp_(s.detach(), 1 - decay)
    for t, s in zip(teacher.buffers(), model.buffers(), strict=True):
        t.copy_(s)


class TeacherTower:
    """The teacher handling an objective with a ``teacher`` tower shares (distillation,
    ALIP): with ``mode == "ema"`` the teacher starts as a frozen copy of the student and
    follows it by :func:`ema_update` after each step; it is never in training mode."""

    mode: str
    teacher: nn.Module | None
    ema_decay: float

    def attach(self, model: nn.Module) -> None:
        if self.mode == "ema":
            self.teacher = freeze(copy.deepcopy(model))

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if self.mode == "ema" and self.teacher is not None:
            ema_update(self.teacher, model, self.ema_decay)

    def train(self, mode: bool = True) -> Any:
        super().train(mode)  # type: ignore[misc]
        if self.teacher is not None:
            self.teacher.eval()  # frozen or averaged: never in training mode
        return self


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings of a batch, as fp32, without gradients.

    ``images`` come normalised for the student; a tower with another input size sees them
    resized (its mean/std are assumed equal: true for every clipforge and OpenAI model).
    Tokens are padded with zeros or cut to the tower's context; cutting would drop the
    end token the text tower pools at, so a shorter context is refused instead.
    """
    cfg = model.cfg  # type: ignore[attr-defined]
    size = cfg.vision.image_size
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    ctx = cfg.text.context_length
    if tokens.shape[1] < ctx:
        tokens = F.pad(tokens, (0, ctx - tokens.shape[1]))
    elif tokens.shape[1] > ctx:
        used = int((tokens != 0).any(dim=0).nonzero().max()) + 1 if tokens.numel() else 0
        if used > ctx:
            raise ClipforgeError(
                f"the frozen tower reads {ctx} tokens but the batch needs {used}; "
                "use a student with a context length no longer than the tower's"
            )
        tokens = tokens[:, :ctx]
    img = model.encode_image(images, normalize=True)  # type: ignore[operator]
    txt = model.encode_text(tokens, normalize=True)  # type: ignore[operator]
    return img.float(), txt.float()
