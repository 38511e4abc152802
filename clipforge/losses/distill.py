"""Contrastive distillation from a teacher's similarity distributions.

The teacher is a frozen model (DCLIP; CLIP-Refine's HyCD uses the pre-trained model),
an exponential moving average of the student (DeGLA), or embeddings stored beside the
data (MobileCLIP's reinforced data set: ``Sample.meta["teacher_image"]`` and
``["teacher_text"]``, lists of floats, which the pipeline carries into the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective, weighted_mean
from clipforge.losses.clip import clip_loss
from clipforge.losses.registry import LossSpec, register
from clipforge.losses.towers import TeacherTower, embed, freeze
from clipforge.models import load
from clipforge.ranges import below_one, non_negative, positive, probability

# Stored embeddings carry no temperature; 0.01 is what CLIP models learn (scale 100).
STORED_TEACHER_TEMPERATURE = 0.01


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` of every row."""
    return F.kl_div(
        student_logits.log_softmax(dim=1),
        teacher_logits.log_softmax(dim=1),
        log_target=True,
        reduction="none",
    ).sum(dim=1)


def similarity_kd_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    weights: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL from the teacher's to the student's similarity distributions, both directions::

        P = softmax_rows(s_t X_t Y_t^T),  Q = softmax_rows(s X Y^T)
        L = 1/2 [ 1/B sum_i KL(P_i || Q_i) + 1/T' sum_j KL(P^T_j || Q^T_j) ]

    The image-to-text rows span every text column, hard negatives included (the teacher
    says how wrong each one is); the text-to-image rows are those of the T' positive
    captions. Teacher and student may differ in width: only their ``B x T`` similarity
    matrices meet. ``weights`` ``[B]`` weight each image's rows and its captions'.
    """
    s_logits = scale * image @ text.T
    t_logits = teacher_scale * teacher_image @ teacher_text.T
    li = _kl_rows(t_logits, s_logits)
    keep = slice(None) if owner is None else owner >= 0
    lt = _kl_rows(t_logits[:, keep].T, s_logits[:, keep].T)
    wt = weights if weights is None or owner is None else weights[owner[keep]]
    return (weighted_mean(li, weights) + weighted_mean(lt, wt)) / 2


def feature_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(student_i, teacher_i))``: pulls embeddings onto the teacher's."""
    if student.shape[1] != teacher.shape[1]:
        raise ClipforgeError(
            f"the feature distillation term needs equal widths (student {student.shape[1]}, "
            f"teacher {teacher.shape[1]}); set --distill-feature-weight 0"
        )
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


class DistillObjective(TeacherTower, Objective):
    """``(1 - w) CLIP + w KD + w_f (feature cosine)``, as MobileCLIP mixes them.

    As ``KL(P || Q) = CE(P, Q) - H(P)``, the first two terms are, up to a constant, the
    cross-entropy against hybrid labels ``(1 - w) onehot + w P_teacher``: CLIP-Refine's
    HyCD when the teacher is the frozen pre-trained model (``--init`` and ``--teacher``
    the same checkpoint).

    ``teacher``: ``"ema"`` (a moving average of the student, updated after every
    optimizer step with ``ema_decay``), ``"data"`` (embeddings stored in the samples'
    meta) or a path to a run folder / checkpoint (a frozen model). ``temperature`` is the
    teacher's softmax temperature; None uses a live teacher's own learned one and
    :data:`STORED_TEACHER_TEMPERATURE` for stored embeddings.
    """

    def __init__(
        self,
        teacher: str | Path | None,
        weight: float = 0.5,
        temperature: float | None = None,
        feature_weight: float = 0.0,
        ema_decay: float = 0.999,
        hard_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not teacher:
            raise ClipforgeError(
                "loss 'distill' needs --teacher: 'ema', 'data' (teacher_image/teacher_text "
                "in the samples' meta) or a run folder / checkpoint"
            )
        # The ranges declared with the options, for objectives built without a config.
        check_field(DistillOptions, "distill_weight", weight)
        check_field(DistillOptions, "distill_temperature", temperature)
        check_field(DistillOptions, "distill_feature_weight", feature_weight)
        check_field(DistillOptions, "teacher_ema_decay", ema_decay)
        self.mode = str(teacher) if str(teacher) in ("ema", "data") else "frozen"
        self.weight = weight
        self.temperature = temperature
        self.feature_weight = feature_weight
        self.ema_decay = ema_decay
        self.hard_weight = hard_weight
        self.teacher: nn.Module | None = None
        if self.mode == "frozen":
            self.teacher = freeze(load(teacher, what="distillation teacher"))
        elif self.mode == "data":
            self.batch_keys = ("teacher_image", "teacher_text")
        self._last: dict[str, float] = {}

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        t_image, t_text = embed(self.teacher, images, tokens)
        return {"teacher_image": t_image, "text_teacher": t_text}

    def _teacher_scale(self) -> torch.Tensor | float:
        if self.temperature is not None:
            return 1 / self.temperature
        if self.teacher is not None:
            return self.teacher.logit_scale_exp().detach().float()  # type: ignore[operator]
        return 1 / STORED_TEACHER_TEMPERATURE

    def forward(self, f: Features) -> torch.Tensor:
        t_image = F.normalize(f.extra["teacher_image"].float(), dim=-1)
        if "text_teacher" in f.extra:  # live teacher: one row per text
            t_text = f.extra["text_teacher"]
        else:  # stored: one caption embedding per sample
            if f.owner is not None:
                raise ClipforgeError(
                    "stored teacher embeddings hold one caption per sample: use "
                    "--caption first or random and no --hard-negatives with --teacher data"
                )
            t_text = f.extra["teacher_text"]
        t_text = F.normalize(t_text.float(), dim=-1)
        contrastive = clip_loss(
            f.image, f.text, f.scale, f.bias, f.weights, f.owner, hard_weight=self.hard_weight
        )
        kd = similarity_kd_loss(
            f.image, f.text, f.scale, t_image, t_text, self._teacher_scale(), f.weights, f.owner
        )
        loss = (1 - self.weight) * contrastive + self.weight * kd
        self._last = {
            "loss/contrastive": float(contrastive.detach()),
            "loss/kd": float(kd.detach()),
        }
        if self.feature_weight:
            feat = (feature_cosine_loss(f.image, t_image) + feature_cosine_loss(f.text, t_text)) / 2
            loss = loss + self.feature_weight * feat
            self._last["loss/feature"] = float(feat.detach())
        return loss

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class DistillOptions:
    teacher: str | None = option(
        None, "distill: 'ema' (average of the student), 'data' (meta teacher_image/"
        "teacher_text) or a run folder / checkpoint (frozen)",
    )  # fmt: skip
    teacher_ema_decay: float = option(
        0.999, "distill with --teacher ema: decay of the moving average per step", check=below_one
    )
    distill_weight: float = option(
        0.5, "distill: loss = (1 - w) contrastive + w KL(teacher || student)", check=probability
    )
    distill_temperature: float | None = option(
        None, "distill: teacher softmax temperature (none = the teacher's own, 0.01 for "
        "stored embeddings)", check=positive,
    )  # fmt: skip
    distill_feature_weight: float = option(
        0.0, "distill: weight of the 1 - cos(student, teacher) feature term", check=non_negative
    )


def _build(o: DistillOptions, run: Any) -> Objective:
    return DistillObjective(
        o.teacher, o.distill_weight, o.distill_temperature, o.distill_feature_weight,
        o.teacher_ema_decay, getattr(run, "hard_negative_weight", 1.0),
    )  # fmt: skip


register(
    "distill",
    LossSpec(
        _build,
        summary="CLIP + KL to a --teacher's similarity distributions (frozen, ema or data)",
        options=DistillOptions,
    ),
)
