"""An exponential moving average of the model's weights (``--ema-decay``).

After every optimizer step ``ema = d ema + (1 - d) theta`` for each floating-point
tensor of the model's state and of its heads (a caption decoder the objective trains;
integer buffers are copied). The average lives in ``last.pt`` (so a resumed run
continues it bit for bit) and is written as ``checkpoints/ema.pt`` at the end, a model
checkpoint like ``final.pt``, heads included.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# Heads' tensors sit beside the model's in one state, under this prefix (no tensor of a
# CLIP model starts with it).
HEADS_PREFIX = "heads."


class WeightEMA:
    """The moving average of ``model``'s state dict and of ``heads``' (by name), starting
    from their current weights."""

    def __init__(
        self, model: nn.Module, decay: float, heads: Mapping[str, nn.Module] | None = None
    ) -> None:
        self.decay = decay
        self.heads = dict(heads or {})
        self.state = {k: v.detach().clone() for k, v in self._current(model).items()}

    def _current(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = dict(model.state_dict())
        for name, head in self.heads.items():
            state.update({f"{HEADS_PREFIX}{name}.{k}": v for k, v in head.state_dict().items()})
        return state

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in self._current(model).items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                avg.copy_(v)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        # A state saved before heads were averaged lacks their keys: they keep the
        # current weights.
        for k, v in state.items():
            self.state[k].copy_(v)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The averaged model weights (a state dict of the model)."""
        return {k: v for k, v in self.state.items() if not k.startswith(HEADS_PREFIX)}

    def head_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averaged weights of each head, by name."""
        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.heads}
        for k, v in self.state.items():
            if k.startswith(HEADS_PREFIX):
                name, _, rest = k.removeprefix(HEADS_PREFIX).partition(".")
                out[name][rest] = v
        return out
