"""LoRA: low-rank adapters on the linear layers of the transformer blocks.

``y = W x + b + (alpha / r) B A x`` with ``A`` ``[r, in]`` and ``B`` ``[out, r]``; ``B``
starts at zero, so an adapted model starts as the model it adapts (Hu et al., 2021).

Our own small module rather than ``peft``: peft wraps each target in a ``LoraLayer``
whose base weight moves to ``....base_layer.weight``, which would rename every adapted
tensor of clipforge's checkpoints (and so break the converters' name tables, ``--init``
and resume), and it would add a dependency for some 60 lines. Here an adapted layer is
still an :class:`~torch.nn.Linear` with its own ``weight`` and ``bias``; it only gains
``lora_a``, ``lora_b`` and the buffer ``lora_scale``, so a state dict names its own
adapters and :func:`clipforge.models.load` can merge them without any side file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.outputs import atomic_write

TARGETS = ("qkv", "proj", "fc1", "fc2")
"""Linear layers of a transformer block that can carry adapters (attention in and out
projections, MLP layers)."""

ADAPTER_KEYS = ("lora_a", "lora_b", "lora_scale")


class LoRALinear(nn.Linear):
    """A linear layer with a trainable low-rank update beside its (frozen) weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        # A buffer, so a checkpoint alone says how to merge its adapters.
        self.register_buffer("lora_scale", torch.tensor(alpha / rank, **kw))
        # nn.Linear's own initialisation of a weight matrix, as the LoRA paper's A.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return F.linear(x, self.weight, self.bias) + self.lora_scale.to(x.dtype) * low

    def merged(self) -> nn.Linear:
        """A plain linear layer computing the same function: ``W + scale B A``."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(self.weight.device, self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.lora_scale * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def parse_targets(text: str) -> tuple[str, ...]:
    """``--lora-targets`` as a tuple, refusing unknown names in one line."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ClipforgeError(
            f"--lora-targets: unknown target {bad[0] if bad else text!r} (known: {', '.join(TARGETS)})"
        )
    return names


def _sites(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every target linear in the blocks of both towers.

    In a mixture-of-experts block (``clipforge upcycle``) ``fc1``/``fc2`` name the layers
    of every expert, each with its own adapter; the router stays frozen with the rest.
    """
    sites = []
    for tower in (model.visual, model.text):
        for blk in tower.transformer.blocks:
            mlps = getattr(blk.mlp, "experts", None) or [blk.mlp]
            pairs = [(blk.attn, "qkv"), (blk.attn, "proj")]
            pairs += [(mlp, name) for mlp in mlps for name in ("fc1", "fc2")]
            sites += [(parent, name) for parent, name in pairs if name in targets]
    return sites


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> int:
    """Freeze ``model`` and give every target layer an adapter; returns the number of
    adapter parameters (the only ones that train)."""
    model.requires_grad_(False)
    n = 0
    for parent, name in _sites(model, targets):
        layer = LoRALinear(getattr(parent, name), rank, alpha)
        setattr(parent, name, layer)
        n += layer.lora_a.numel() + layer.lora_b.numel()
    return n


def is_adapter_key(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ADAPTER_KEYS


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its weight, in place; returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters of ``model`` (a few hundred KB for the tiny preset)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_adapter_key(k)}


def apply_adapters(model: nn.Module, adapters: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give ``model`` (without adapters) the adapters of ``adapters`` and their values.

    The rank, scale and targets are read from the tensors, so adapters need no config.
    A name the model has no layer for is refused in one line.
    """
    layers = {k.rsplit(".", 1)[0] for k in adapters}
    modules = dict(model.named_modules())
    for name in sorted(layers):
        parent_name, _, attr = name.rpartition(".")
        base = modules.get(name)
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise ClipforgeError(f"adapter {name!r} has no linear layer in this model")
        a = adapters[f"{name}.lora_a"]
        scale = float(adapters[f"{name}.lora_scale"])
        layer = LoRALinear(base, a.shape[0], scale * a.shape[0])
        setattr(modules[parent_name], attr, layer)
    state = {k: v.to(model.logit_scale.dtype) for k, v in adapters.items()}
    missing = [k for k in state if k not in model.state_dict()]
    if missing:
        raise ClipforgeError(f"adapter tensors {missing[:3]} do not fit this model")
    model.load_state_dict(state, strict=False)
    return model


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters of ``model`` alone as a safetensors file (atomically)."""
    from safetensors.torch import save

    tensors = {k: v.contiguous().float() for k, v in adapter_state_dict(model).items()}
    if not tensors:
        raise ClipforgeError("the model has no LoRA adapters to save")
    layers = json.dumps(sorted({k.rsplit(".", 1)[0] for k in tensors}))
    atomic_write(path, save(tensors, metadata={"format": "clipforge-lora", "layers": layers}))
    return Path(path)


def load_adapters(path: str | Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a file :func:`save_adapters` wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ClipforgeError(f"cannot read adapters {path}: {e}") from None
    if not tensors or not all(is_adapter_key(k) for k in tensors):
        raise ClipforgeError(f"{path} holds no LoRA adapters (written by save_adapters)")
    return tensors
