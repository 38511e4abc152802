"""Locked towers (LiT) and frozen norms: which parameters of a model a fine-tune trains.

A locked parameter has ``requires_grad=False``: it gets no gradient, the optimizer
(:func:`clipforge.train.optim.param_groups`) holds no state for it, and its value never
changes. A locked tower's batch norms (the conv stem's) are held in eval mode as well,
so their running statistics stay as loaded: a locked tower is a fixed function.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP

NORMS = (nn.LayerNorm, nn.BatchNorm2d)


@dataclass(frozen=True)
class Locks:
    """What to lock. ``*_unlocked`` keeps that many of a locked tower's last blocks
    trainable, with everything after them (final norm, pooling, projection)."""

    image: bool = False
    image_unlocked: int = 0
    text: bool = False
    text_unlocked: int = 0
    norms: bool = False

    @property
    def any(self) -> bool:
        return self.image or self.text or self.norms


def apply_locks(model: CLIP, locks: Locks) -> list[str]:
    """Lock the parts of ``model`` that ``locks`` names; returns the locked parameters'
    names. Refuses an unlocked-layer count beyond the tower's depth in one line."""
    towers = (
        ("image", model.visual, locks.image, locks.image_unlocked),
        ("text", model.text, locks.text, locks.text_unlocked),
    )
    for name, tower, locked, unlocked in towers:
        depth = len(tower.transformer.blocks)
        if unlocked and not locked:
            raise ClipforgeError(f"--lock-{name}-unlocked-layers needs --lock-{name}")
        if unlocked > depth:
            raise ClipforgeError(
                f"--lock-{name}-unlocked-layers {unlocked}: the {name} tower has {depth} blocks"
            )
        if locked:
            _lock_tower(tower, depth - unlocked)
    if locks.norms:
        for m in model.modules():
            if isinstance(m, NORMS):
                m.requires_grad_(False)
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def _lock_tower(tower: nn.Module, locked_blocks: int) -> None:
    blocks = tower.transformer.blocks
    keep = {id(p) for blk in list(blocks)[locked_blocks:] for p in blk.parameters()}
    if locked_blocks < len(blocks):
        # The head after the last block (final norm, pooling, projection) trains with it.
        after = [getattr(tower, n, None) for n in ("norm_post", "norm_final", "attn_pool", "proj")]
        keep |= {id(p) for m in after if isinstance(m, nn.Module) for p in m.parameters()}
    locked_modules = set()
    for mod_name, m in tower.named_modules():
        own = list(m.parameters(recurse=False))
        if own and all(id(p) not in keep for p in own):
            locked_modules.add(mod_name)
        for p in own:
            if id(p) not in keep:
                p.requires_grad_(False)
    for mod_name, m in tower.named_modules():
        if isinstance(m, nn.BatchNorm2d) and mod_name in locked_modules:
            _hold_eval(m)


class LockedBatchNorm2d(nn.BatchNorm2d):
    """A batch norm of a locked tower: always in eval mode, so it normalises with the
    running statistics it was loaded with and never updates them."""

    def train(self, mode: bool = True) -> LockedBatchNorm2d:
        return super().train(False)


def _hold_eval(m: nn.BatchNorm2d) -> None:
    # A class swap, not a new module: same tensors and state-dict keys, and every
    # model.train() the loop makes reaches it through its own train(), which says eval.
    m.__class__ = LockedBatchNorm2d
    m.eval()
