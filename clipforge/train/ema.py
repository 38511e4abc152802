"""An exponential moving average of the model's weights (``--ema-decay``).

After every optimizer step ``ema = d ema + (1 - d) theta`` for each floating-point
tensor of the model's state (integer buffers are copied). The average lives in
``last.pt`` (so a resumed run continues it bit for bit) and is written as
``checkpoints/ema.pt`` at the end, a model checkpoint like ``final.pt``.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``model``'s state dict, starting from its current weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                avg.copy_(v)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)
