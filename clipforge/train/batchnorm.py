"""Batch norm whose statistics cover the global batch, on every backend.

The conv stem of the default recipe normalises with batch statistics. Under data
parallelism each rank sees ``1/N`` of the batch, so per-rank statistics would make an
``N``-process run a different model from the 1-process run. PyTorch's ``SyncBatchNorm``
fixes that on GPUs only; this one gathers the per-channel sums with gradient
(:func:`~clipforge.train.collectives.gather_rows`) and so also runs on gloo/CPU. The
mean and the variance are taken in two passes, as a single-process batch norm does,
so the result matches it to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from clipforge.train.collectives import gather_rows
from clipforge.train.distributed import World


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` with training statistics over all ranks' rows.

    Same parameters and buffers (and so the same state-dict keys) as the module it
    replaces; in eval mode, or alone, it is that module.
    """

    world: World = World()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.world.parallel):
            return super().forward(x)
        ones = [1] * self.world.size
        dims = (0, 2, 3)
        # Statistics in float32 under bf16 autocast; float64 stays float64.
        xf = x if x.dtype == torch.float64 else x.float()
        count = torch.tensor([[x.numel() / x.shape[1]]], dtype=xf.dtype, device=x.device)
        local = torch.cat([xf.sum(dims)[None], count], dim=1)
        total = gather_rows(local, ones, self.world).sum(0)
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xf - mean[None, :, None, None]
        var = gather_rows((centred * centred).sum(dims)[None], ones, self.world).sum(0) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Running variance is the unbiased estimate, as nn.BatchNorm2d keeps it.
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(var * n / max(n - 1, 1.0), m)


def globalise_batch_norms(model: nn.Module, world: World) -> int:
    """Swap every ``BatchNorm2d`` of ``model`` for a :class:`GlobalBatchNorm2d`, in place.

    Parameters and buffers are kept (the same tensors). Returns how many were swapped.
    """
    swapped = 0
    for module in list(model.modules()):
        for child in module.children():
            if type(child) is nn.BatchNorm2d:
                # A class swap, not a new module: the optimizer already holds these
                # parameters, and a checkpoint may have been loaded into them.
                child.__class__ = GlobalBatchNorm2d
                child.world = world  # type: ignore[attr-defined]
                swapped += 1
    return swapped


__all__ = ["GlobalBatchNorm2d", "globalise_batch_norms"]
