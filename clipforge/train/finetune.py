"""What a fine-tune trains and sees: locked towers, LoRA adapters, patch dropout (and
gradient checkpointing, which changes only memory).

:func:`check` runs in :func:`clipforge.train.builders.build`, before the run folder
exists; :func:`configure` runs on the built model, after ``--init`` and before the
optimizer, which then holds only what still requires a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, ModelConfig
from clipforge.models.freeze import Locks, apply_locks
from clipforge.models.lora import add_lora, parse_targets
from clipforge.train.config import TrainConfig


def locks(cfg: TrainConfig) -> Locks:
    return Locks(
        image=cfg.lock_image,
        image_unlocked=cfg.lock_image_unlocked_layers,
        text=cfg.lock_text,
        text_unlocked=cfg.lock_text_unlocked_layers,
        norms=cfg.freeze_norms,
    )


def check(cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """Refuse, in one line, fine-tuning options that contradict each other or the model."""
    for tower, locked, unlocked, depth in (
        ("image", cfg.lock_image, cfg.lock_image_unlocked_layers, mcfg.vision.layers),
        ("text", cfg.lock_text, cfg.lock_text_unlocked_layers, mcfg.text.layers),
    ):
        if unlocked and not locked:
            raise ClipforgeError(f"--lock-{tower}-unlocked-layers needs --lock-{tower}")
        if unlocked > depth:
            raise ClipforgeError(
                f"--lock-{tower}-unlocked-layers {unlocked}: the {tower} tower has {depth} blocks"
            )
    if cfg.lora_rank:
        parse_targets(cfg.lora_targets)
        if locks(cfg).any:
            # LoRA already freezes every base weight; a lock on top would say nothing.
            raise ClipforgeError(
                "--lora-rank trains only adapters; drop the --lock-*/--freeze-norms flags"
            )
    if mcfg.moe_experts and cfg.accum_exact:
        raise ClipforgeError(
            "--accum-exact cannot replay the experts' load-balancing loss; drop it for a "
            "mixture-of-experts model"
        )
    if cfg.patch_dropout and mcfg.vision.pool == "grid":
        raise ClipforgeError(
            "--patch-dropout cannot be used with vision.pool=grid (its cells need every patch)"
        )


@dataclass
class Trainable:
    """How much of the model a run trains."""

    trainable: int
    total: int

    def describe(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"trainable parameters {self.trainable:,} of {self.total:,} ({share:.2f}%)"


def configure(model: CLIP, cfg: TrainConfig) -> Trainable:
    """Lock, adapt, and set patch dropout and gradient checkpointing on ``model`` as
    ``cfg`` says."""
    apply_locks(model, locks(cfg))
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, parse_targets(cfg.lora_targets))
    model.visual.patch_dropout = cfg.patch_dropout
    for tower in (model.visual, model.text):
        tower.transformer.checkpointing = cfg.grad_checkpointing
    params = list(model.parameters())
    return Trainable(sum(p.numel() for p in params if p.requires_grad),
                     sum(p.numel() for p in params))  # fmt: skip
