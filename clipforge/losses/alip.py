"""Adaptive sample weights from image-caption consistency (after ALIP, Yang et al., 2023).

ALIP gates each pair of a web batch by how consistent its image and caption are, so a
caption that describes another image (or nothing) weighs little in the contrastive loss.
Here consistency is judged by a teacher, a moving average of the student or a frozen
model: the probability it gives the pair against the rest of the batch, both ways. The
weights go through the same per-sample ``weights`` path as a data set's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, first_positive
from clipforge.losses.clip import clip_loss
from clipforge.losses.registry import LossSpec, register
from clipforge.losses.towers import TeacherTower, embed, freeze
from clipforge.models import load
from clipforge.ranges import below_one, non_negative


def consistency(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B]`` consistency of each image with its (first) caption, in ``(0, 1)``::

        c_i = 1/2 [ softmax_j(s x_i . y_j)_{p(i)} + softmax_k(s x_k . y_{p(i)})_i ]

    with ``p(i)`` the image's first positive caption; the image-to-text softmax runs over
    every text, hard negatives included, the text-to-image one over the images. A pair
    the embeddings agree on scores near 1; a caption that fits another image as well
    scores about 1/2 or less, one that fits nothing about ``1 / B``.
    """
    logits = scale * image @ text.T
    cap = first_positive(Features(image, text, torch.ones(()), owner=owner))
    rows = torch.arange(image.shape[0], device=image.device)
    i2t = logits.softmax(dim=1)[rows, cap]
    t2i = logits[:, cap].softmax(dim=0)[rows, rows]
    return (i2t + t2i) / 2


class AlipObjective(TeacherTower, Objective):
    """CLIP with each image's terms weighted by ``consistency ** power`` under a teacher.

    ``teacher``: ``"ema"`` (the student's moving average, ``ema_decay`` per step; it
    starts as the student, so the first weights are nearly uniform and sharpen as it
    learns) or a run folder / checkpoint (frozen). ``power`` 0 is plain CLIP; the
    weights are detached: the student is not trained to make its teacher agree.
    """

    def __init__(
        self,
        teacher: str | Path = "ema",
        ema_decay: float = 0.99,
        power: float = 1.0,
        hard_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_field(AlipOptions, "alip_ema_decay", ema_decay)
        check_field(AlipOptions, "alip_power", power)
        if not teacher:
            raise ClipforgeError("loss 'alip' needs --alip-teacher: 'ema' or a run folder")
        self.mode = "ema" if str(teacher) == "ema" else "frozen"
        self.ema_decay, self.power, self.hard_weight = ema_decay, power, hard_weight
        self.teacher: nn.Module | None = None
        if self.mode == "frozen":
            self.teacher = freeze(load(teacher, what="alip teacher"))
        self._last: dict[str, float] = {}

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise ClipforgeError("loss 'alip' ran before its teacher was attached to a model")
        t_image, t_text = embed(self.teacher, images, tokens)
        return {"alip_image": t_image, "text_alip": t_text}

    def forward(self, f: Features) -> torch.Tensor:
        with torch.no_grad():
            assert self.teacher is not None  # prepare() refused to run without one
            scale = self.teacher.logit_scale_exp().float()  # type: ignore[operator]
            c = consistency(f.extra["alip_image"], f.extra["text_alip"], scale, f.owner)
            w = c**self.power
            if f.weights is not None:
                w = w * f.weights
        self._last = {"alip/consistency": float(c.mean()), "alip/weight_min": float(w.min())}
        return clip_loss(f.image, f.text, f.scale, f.bias, w, f.owner, self.hard_weight)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class AlipOptions:
    alip_teacher: str = option(
        "ema", "alip: who judges consistency: 'ema' (average of the student) or a run "
        "folder / checkpoint (frozen)",
    )  # fmt: skip
    alip_ema_decay: float = option(
        0.99, "alip with --alip-teacher ema: decay of the moving average per step",
        check=below_one,
    )  # fmt: skip
    alip_power: float = option(
        1.0, "alip: sample weight = consistency ** power (0 = plain CLIP)", check=non_negative
    )


def _build(o: AlipOptions, run: Any) -> Objective:
    return AlipObjective(
        o.alip_teacher, o.alip_ema_decay, o.alip_power, getattr(run, "hard_negative_weight", 1.0)
    )


register(
    "alip",
    LossSpec(
        _build,
        summary="CLIP weighting each pair by its consistency under an EMA or frozen teacher (ALIP)",
        options=AlipOptions,
    ),
)
